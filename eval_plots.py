"""Evaluate a prediction folder: ``python eval_plots.py --pred DIR --labels DIR --out DIR``.

Thin wrapper kept for users of the reference project; see :mod:`nnunet_multitask.plots`.
"""
from nnunet_multitask.plots import main

if __name__ == "__main__":
    raise SystemExit(main())
