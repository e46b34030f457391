"""minidino: DINO-style self-distillation, small, readable and fast.

The modules, in the order the lessons teach them, then the run around them:

    vit.py              01  the Vision Transformer (timm- and DINO-checkpoint compatible)
    augment.py          02  multi-crop: the per-image reference and the batched version
    augment_batched.py  02  the batched crop and colour operations
    head.py             03  the projection head, the multi-crop wrapper, last-layer freezing
    loss.py             03  the DINO loss and the running center
    collapse.py         04  collapse diagnostics: entropies, KL, prototypes in use
    teacher.py          05  the EMA teacher
    schedules.py        05  learning rate, weight decay, momentum and temperature per step
    step.py             06  building the parts of a run; one training step
    train.py            06  the training loop: resume, steps, kNN, checkpoints
    training_log.py     06  what a run records: metrics.jsonl, epochs.jsonl, the progress bar
    data.py, folder.py  07  the datasets (built in, CIFAR, ImageNette, your folder), a run's splits
    resident.py         07  images read from disk, decoded once into memory by worker processes
    batches.py          07  feeding crops: images held on the device, or a DataLoader
    evaluate.py         07  frozen features, weighted kNN, the linear probe
    held_out.py         07  a run's held-out evaluation (kNN during training), a checkpoint's scores
    attention.py        08  CLS attention maps, their masks, IoU with object masks
    ibot.py             09  iBOT: block masks, the mask token, the masked patch loss
    patch_probe.py      09  a linear probe of patch tokens: object vs background
    koleo.py            10  DINOv2's KoLeo regulariser
    sinkhorn.py         10  DINOv2's Sinkhorn-Knopp centering
    video.py            11  a built-in moving-shapes video and DAVIS-2017
    propagation.py      11  video label propagation, J and F

    config.py           the training config: every knob and its reason
    config_checks.py    what each config field allows; the ConfigError that names a bad value
    config_cli.py       the config on the command line: one --field-name option per field
    presets.py          named configs: cpu-demo, cifar10, imagenette, ibot-cifar10, ...
    device.py           where training runs (cuda, then mps, then cpu)
    distributed.py      several processes with torchrun (DDP)
    checkpoint.py       atomic checkpoints, --resume auto, clean interruption
    watchdog.py         the collapse watchdog
    sweep.py            several runs side by side, one table
    pretrained.py       exporting a backbone; the shipped teachers
    demo.py             the main job: `python -m minidino demo`
    shapes.py           the built-in shapes dataset
    scenes.py           the built-in scenes (scene_paint.py draws them, scene_video.py moves them)
    viz.py, diagrams.py figures: training curves, attention maps; the method diagrams
    course.py, checks/  the lessons' helpers and the exercise checks
"""

__version__ = "0.1.0"
