"""The model package: the one format a model has on the device, and the code that builds and reshapes it.

    graph.py     the IR (Graph, Node, TensorSpec, ParamSpec) and the package on disk: model.json +
                 weights.npz, loaded and validated (load_package) and written atomically (save_package);
                 the host reuses it to write packages instead of duplicating the format
    builder.py   GraphBuilder (the zoo's and the tests' way to write a graph) and the surgery a fine-tune
                 does: replace_head (a new classifier), reinit (--init scratch)
    heads.py     what training reads: the logits (loss_output skips a final Softmax/LogSoftmax), the
                 loss graph appended for training (loss_graph), the class count (num_classes)

Imports only ops/ (the registry validates every node) and the shared errors/fsutil/limits.
"""
