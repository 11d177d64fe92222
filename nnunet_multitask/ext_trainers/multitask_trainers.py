"""Entry module for nnU-Net's trainer discovery.

nnU-Net imports every module of each folder listed in ``nnUNet_extTrainer`` by its bare name and
looks for the requested class. This folder is that folder (``nnunet-multitask trainer-path``
prints it); the classes themselves live in :mod:`nnunet_multitask.trainer`, so checkpoints,
pickling and DDP workers all see one class, whichever way it was found.
"""
from nnunet_multitask.trainer import (  # noqa: F401
    nnUNetTrainerMultitask,
    nnUNetTrainerMultitask_1epoch,
    nnUNetTrainerMultitask_5epochs,
    nnUNetTrainerMultitask_100epochs,
    nnUNetTrainerMultitask_100epochs_classWeighted,
    nnUNetTrainerMultitask_classWeighted,
    nnUNetTrainerMultitask_CPUDemo,
    nnUNetTrainerMultitask_CPUSmoke,
    nnUNetTrainerMultitask_lambda05,
)
