"""The core: configuration, devices, the model with its flat buffers, the models, optimizers,
learning-rate schedules and metrics. Above layers/ and data/, below the sync rules (sync/) and
the driver (engine/): nothing here imports either.
"""
