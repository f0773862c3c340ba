"""``dynfilter bench``: the benchmark harness (:mod:`.harness`) and its suites.

- :mod:`.harness`: timing (interleaved, settled), peak memory, copy bandwidth, streaming bounds, tables,
  and :data:`~.harness.SUITES`, the registry of suites by name;
- :mod:`.dynamic`: the dynamic filter against its unfold reference, and ADFNet inference;
- :mod:`.deform`: the modulated deformable conv against torchvision's, and an ADFNet training step;
- :mod:`.onnx`: onnxruntime (CPU) against PyTorch eager inference of exported ADFNet and DnCNN + DConv;
- :mod:`.train`: training steps per second per model and trainer option, FLOP/s, the paper run's time;
- :mod:`.models`: the ADFNet the whole-model suites time.

Method and results: ``docs/performance.md``.
"""
