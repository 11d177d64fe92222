"""Convert the raw quiz layout into an nnU-Net v2 dataset: ``python dataset_conversion.py SOURCE [-d 777] [-n NAME]``.

Thin wrapper around :func:`nnunet_multitask.conversion.main` (also ``nnunet-multitask convert``).
"""
from nnunet_multitask.conversion import main

if __name__ == "__main__":
    raise SystemExit(main())
