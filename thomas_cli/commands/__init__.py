"""The commands, one thin module per verb group: parse options, call a service, render (views.py).
Importing this package registers every command on app.app; command modules import services, views
and app, never each other (common.py aside) and are never imported by a service.

    devices   global options, thomas devices / doctor / pair / version
    models    thomas zoo list|build, inspect, push-model, models list
    data      thomas push-data
    finetune  thomas finetune
    fleet     thomas fleet finetune (Flower; imported only when it runs)
    runs      thomas runs list|show|pull|rm|attach|cancel
    onnx      thomas import / export
    infer     thomas infer
    evaluate  thomas eval
    bench     thomas bench / tune
    report    thomas report
    demo      thomas demo
    setup     thomas setup termux
"""
# NOTE: the order of `thomas --help`
from . import devices, models, data, finetune, fleet, runs, onnx, infer, evaluate, bench, report, demo, setup  # noqa: F401,I001
