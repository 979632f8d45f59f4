"""Training options read by tools/lazyconfig_train_net.py (Detectron2's common/train.py).

Use your own instead, together with your own training script.
"""

train = dict(
    output_dir="./output",
    init_checkpoint="",  # weights loaded before training: a path or URL ("" for none)
    max_iter=90000,  # total training iterations
    amp=dict(enabled=False),  # options for Automatic Mixed Precision
    ddp=dict(  # options for DistributedDataParallel
        broadcast_buffers=False,
        find_unused_parameters=False,
        fp16_compression=False,
    ),
    checkpointer=dict(period=5000, max_to_keep=100),  # options for PeriodicCheckpointer
    eval_period=5000,  # iterations between evaluations
    log_period=20,  # iterations between metric writes
    device="cuda",
    # segtron addition (MODEL.COMPILE for Python configs): torch.compile these submodules in
    # place; off by default (it changes float rounding).
    compile=dict(enabled=False, modules=["backbone"], mode="default", backend="inductor"),
    # ...
)
