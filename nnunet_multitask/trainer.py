"""``nnUNetTrainerMultitask``: nnU-Net training of segmentation + lesion subtype in one network.

Loss = Dice + CE (nnU-Net's, with deep supervision) + ``subtype_loss_weight`` x CE(subtype).
The case's subtype comes from the ``case_subtypes`` table in ``dataset.json`` (see
:mod:`nnunet_multitask.labels`), looked up by the batch's case keys.

Patches that miss the lesion: the case label applies to every patch. The head pools the whole
bottleneck of a patch, which at nnU-Net's patch sizes covers most of a pancreas ROI, and nnU-Net's
foreground oversampling (a third of each batch centred on a foreground voxel) keeps pancreas and
lesion in view for a large share of patches. At inference the case's subtype is the
foreground-weighted mean over all tiles, so background-only tiles barely count.
"""
from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from time import sleep

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from nnunetv2.configuration import default_num_processes  # noqa: E402
from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder  # noqa: E402
from nnunetv2.inference.export_prediction import export_prediction_from_logits  # noqa: E402
from nnunetv2.inference.sliding_window_prediction import compute_gaussian  # noqa: E402
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402
from nnunetv2.utilities.file_path_utilities import check_workers_alive_and_busy  # noqa: E402
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager  # noqa: E402
from sklearn.metrics import recall_score  # noqa: E402
from torch import distributed as dist  # noqa: E402
from torch import nn  # noqa: E402

from nnunet_multitask.io import write_json_atomic  # noqa: E402
from nnunet_multitask.labels import SUBTYPES, read_case_subtypes  # noqa: E402
from nnunet_multitask.metrics import accuracy, macro_f1  # noqa: E402
from nnunet_multitask.network import build_multitask_network, unwrap_network  # noqa: E402
from nnunet_multitask.predictor import MultitaskPredictor  # noqa: E402
from nnunet_multitask.subtype_tables import write_subtype_tables  # noqa: E402

SUBTYPE_METRICS_JSON = "subtype_metrics.json"
#: Environment variable that overrides ``subtype_loss_weight`` (lambda) of any multitask trainer.
SUBTYPE_WEIGHT_ENV = "nnUNet_subtype_loss_weight"
SUBTYPE_PROGRESS_PNG = "progress_subtype.png"

#: Per-epoch values we add to nnU-Net's logger (one value per epoch each, as it requires).
LOG_KEYS = (
    "train_subtype_losses",
    "val_subtype_losses",
    "val_subtype_accuracy",
    "val_subtype_macro_f1",
    *(f"val_subtype_recall_{k}" for k in SUBTYPES),
)


class MultitaskLoss(nn.Module):
    """nnU-Net's segmentation loss + ``weight`` x cross-entropy on the subtype logits.

    The logits come from the network's
    :attr:`~nnunet_multitask.network.MultitaskResEncUNet.subtype_logits` (same forward pass as the
    segmentation output); the trainer sets :attr:`subtype_target` ``(B,)`` before each step.
    :attr:`last_subtype_loss` keeps the unweighted classification loss for logging.
    """

    def __init__(self, segmentation_loss: nn.Module, network_getter, weight: float):
        super().__init__()
        self.segmentation_loss = segmentation_loss
        self.subtype_ce = nn.CrossEntropyLoss()
        self.weight = weight
        self._network_getter = network_getter
        self.subtype_target: torch.Tensor | None = None
        self.last_subtype_loss: torch.Tensor | None = None

    def set_class_weights(self, class_weights: torch.Tensor) -> None:
        self.subtype_ce = nn.CrossEntropyLoss(weight=class_weights)

    def forward(self, segmentation_output, segmentation_target) -> torch.Tensor:
        segmentation_loss = self.segmentation_loss(segmentation_output, segmentation_target)
        logits = unwrap_network(self._network_getter()).subtype_logits
        subtype_loss = self.subtype_ce(logits.float(), self.subtype_target)
        self.last_subtype_loss = subtype_loss.detach()
        return segmentation_loss + self.weight * subtype_loss


def balanced_class_weights(subtypes: list[int], n_classes: int = len(SUBTYPES)) -> torch.Tensor:
    """``n / (K * n_k)`` per class (scikit-learn's "balanced"); a class absent from training gets 0."""
    counts = np.bincount(np.asarray(subtypes, dtype=int), minlength=n_classes).astype(float)
    weights = np.divide(len(subtypes), n_classes * counts, out=np.zeros(n_classes), where=counts > 0)
    return torch.as_tensor(weights, dtype=torch.float32)


def subtype_scores(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """Accuracy, macro-F1 and per-class recall over subtypes ``SUBTYPES``."""
    recalls = recall_score(targets, predictions, labels=list(SUBTYPES), average=None, zero_division=0)
    return {
        "accuracy": accuracy(targets, predictions),
        "macro_f1": macro_f1(targets, predictions),
        **{f"recall_{k}": float(r) for k, r in zip(SUBTYPES, recalls)},
    }


def _gather(values: list) -> list:
    """Concatenate a per-rank list over all DDP ranks (identity without DDP)."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, values)
    return [v for rank_values in gathered for v in rank_values]


class nnUNetTrainerMultitask(nnUNetTrainer):
    """Multitask trainer; subclasses below change only the class attributes."""

    subtype_loss_weight: float = 0.1
    class_weighted_subtype_loss: bool = False
    #: None keeps nnU-Net's values (1000 epochs of 250 training and 50 validation iterations).
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    val_iterations_per_epoch: int | None = None

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.case_subtypes = read_case_subtypes(dataset_json)
        if os.environ.get(SUBTYPE_WEIGHT_ENV):
            self.subtype_loss_weight = float(os.environ[SUBTYPE_WEIGHT_ENV])
        self.print_to_log_file(f"subtype loss weight (lambda): {self.subtype_loss_weight}")
        if self.epochs is not None:
            self.num_epochs = self.epochs
        if self.iterations_per_epoch is not None:
            self.num_iterations_per_epoch = self.iterations_per_epoch
        if self.val_iterations_per_epoch is not None:
            self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        history = self.logger.local_logger.my_fantastic_logging
        for key in LOG_KEYS:
            history.setdefault(key, [])

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager,
                                   configuration_manager: ConfigurationManager,
                                   num_input_channels: int,
                                   num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        return build_multitask_network(configuration_manager, num_input_channels, num_output_channels,
                                       enable_deep_supervision)

    def _build_loss(self):
        return MultitaskLoss(super()._build_loss(), lambda: self.network, self.subtype_loss_weight)

    def _subtype_targets(self, keys) -> torch.Tensor:
        return torch.as_tensor([self.case_subtypes[k] for k in keys], dtype=torch.long, device=self.device)

    def get_tr_and_val_datasets(self):
        dataset_tr, dataset_val = super().get_tr_and_val_datasets()
        keys = list(dataset_tr.identifiers) + list(dataset_val.identifiers)
        missing = sorted(k for k in keys if k not in self.case_subtypes)
        if missing:
            raise KeyError(
                f"dataset.json of {self.plans_manager.dataset_name} has no subtype for {len(missing)} "
                f"training/validation case(s): {', '.join(missing[:20])}"
            )
        if self.class_weighted_subtype_loss:
            weights = balanced_class_weights([self.case_subtypes[k] for k in dataset_tr.identifiers])
            self.loss.set_class_weights(weights.to(self.device))
            self.print_to_log_file(f"class-weighted subtype CE, weights {weights.tolist()}")
        return dataset_tr, dataset_val

    def train_step(self, batch: dict) -> dict:
        self.loss.subtype_target = self._subtype_targets(batch["keys"])
        result = super().train_step(batch)
        result["subtype_loss"] = self.loss.last_subtype_loss.cpu().numpy()
        return result

    def on_train_epoch_end(self, train_outputs: list[dict]):
        super().on_train_epoch_end(train_outputs)
        losses = _gather([float(o["subtype_loss"]) for o in train_outputs])
        self.logger.log("train_subtype_losses", float(np.mean(losses)), self.current_epoch)

    def validation_step(self, batch: dict) -> dict:
        self.loss.subtype_target = self._subtype_targets(batch["keys"])
        result = super().validation_step(batch)
        logits = unwrap_network(self.network).subtype_logits
        result["subtype_loss"] = self.loss.last_subtype_loss.cpu().numpy()
        result["subtype_predictions"] = logits.argmax(1).cpu().tolist()
        result["subtype_targets"] = self.loss.subtype_target.cpu().tolist()
        return result

    def on_validation_epoch_end(self, val_outputs: list[dict]):
        super().on_validation_epoch_end(val_outputs)
        losses = _gather([float(o["subtype_loss"]) for o in val_outputs])
        targets = np.array(_gather([t for o in val_outputs for t in o["subtype_targets"]]))
        predictions = np.array(_gather([p for o in val_outputs for p in o["subtype_predictions"]]))
        scores = subtype_scores(targets, predictions)
        self.logger.log("val_subtype_losses", float(np.mean(losses)), self.current_epoch)
        for name, value in scores.items():
            self.logger.log(f"val_subtype_{name}", value, self.current_epoch)

    def on_epoch_end(self):
        get = self.logger.get_value
        self.print_to_log_file(
            f"subtype: train_loss {get('train_subtype_losses', -1):.4f} val_loss {get('val_subtype_losses', -1):.4f} "
            f"val_acc {get('val_subtype_accuracy', -1):.3f} val_macro_f1 {get('val_subtype_macro_f1', -1):.3f} "
            "val_recall " + " ".join(f"{k}:{get(f'val_subtype_recall_{k}', -1):.2f}" for k in SUBTYPES)
        )
        super().on_epoch_end()
        if self.local_rank == 0:
            plot_subtype_progress(self.logger.local_logger.my_fantastic_logging,
                                  os.path.join(self.output_folder, SUBTYPE_PROGRESS_PNG))

    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's final validation (segmentations + ``summary.json``) plus, from the same sliding-
        window pass, each case's subtype: ``subtype_results.csv``, ``subtype_probabilities.csv`` and
        ``subtype_metrics.json`` in ``fold_X/validation/``."""
        if self.is_cascaded:
            raise NotImplementedError("nnUNetTrainerMultitask does not support cascaded configurations")
        self.set_deep_supervision_enabled(False)
        self.network.eval()
        predictor = MultitaskPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                       perform_everything_on_device=True, device=self.device, verbose=False,
                                       verbose_preprocessing=False, allow_tqdm=False)
        predictor.manual_initialization(self.network, self.plans_manager, self.configuration_manager, None,
                                        self.dataset_json, self.__class__.__name__,
                                        self.inference_allowed_mirroring_axes)
        output_folder = os.path.join(self.output_folder, "validation")
        os.makedirs(output_folder, exist_ok=True)
        _, val_keys = self.do_split()
        if self.is_ddp:
            val_keys = val_keys[self.local_rank::dist.get_world_size()]
        dataset_val = self.dataset_class(self.preprocessed_dataset_folder, val_keys)

        probabilities = {}
        with multiprocessing.get_context("spawn").Pool(default_num_processes) as export_pool:
            workers, results = list(export_pool._pool), []
            for key in dataset_val.identifiers:
                while check_workers_alive_and_busy(export_pool, workers, results, allowed_num_queued=2):
                    sleep(0.1)
                self.print_to_log_file(f"predicting {key}")
                data, _, _, properties = dataset_val.load_case(key)
                logits, case_probabilities = predictor.predict_case(torch.from_numpy(np.asarray(data[:])))
                probabilities[key] = case_probabilities.numpy()
                results.append(export_pool.starmap_async(export_prediction_from_logits, ((
                    logits.cpu(), properties, self.configuration_manager, self.plans_manager, self.dataset_json,
                    os.path.join(output_folder, key), save_probabilities),)))
            for result in results:
                result.get()
        gathered = dict(_gather(list(probabilities.items())))

        if self.local_rank == 0:
            metrics = compute_metrics_on_folder(
                os.path.join(self.preprocessed_dataset_folder_base, "gt_segmentations"), output_folder,
                os.path.join(output_folder, "summary.json"), self.plans_manager.image_reader_writer_class(),
                self.dataset_json["file_ending"], self.label_manager.foreground_labels,
                self.label_manager.ignore_label, chill=True, num_processes=default_num_processes)
            scores = self._write_validation_subtypes(output_folder, gathered)
            for label, values in metrics["mean"].items():
                self.logger.log_summary(f"final_val/class_{label}_dice", values["Dice"])
            self.logger.log_summary("final_val/foreground_dice", metrics["foreground_mean"]["Dice"])
            for name, value in scores.items():
                self.logger.log_summary(f"final_val/subtype_{name}", value)
            self.print_to_log_file("Mean Validation Dice: ", metrics["foreground_mean"]["Dice"])
            self.print_to_log_file("Validation subtype scores: ", scores)
        if self.is_ddp:
            dist.barrier()
        self.set_deep_supervision_enabled(True)
        compute_gaussian.cache_clear()

    def _write_validation_subtypes(self, output_folder: str, probabilities: dict[str, np.ndarray]) -> dict:
        cases = sorted(probabilities)
        predicted = {k: int(np.argmax(probabilities[k])) for k in cases}
        write_subtype_tables(Path(output_folder), probabilities)
        targets = np.array([self.case_subtypes[k] for k in cases])
        scores = subtype_scores(targets, np.array([predicted[k] for k in cases]))
        write_json_atomic(os.path.join(output_folder, SUBTYPE_METRICS_JSON), {
            **scores,
            "n_cases": len(cases),
            "aggregation": "foreground-weighted mean of softmax probabilities over all tiles and mirrors",
            "per_case": {k: {"target": int(self.case_subtypes[k]), "predicted": predicted[k],
                             "probabilities": [float(p) for p in probabilities[k]]} for k in cases},
        })
        return scores


def plot_subtype_progress(history: dict[str, list], filename: str) -> None:
    """Subtype loss, validation accuracy / macro-F1 and per-class recall per epoch, as a PNG."""
    n = min(len(history[key]) for key in LOG_KEYS)
    epochs = np.arange(n)
    fig, (ax_loss, ax_score) = plt.subplots(2, 1, figsize=(10, 9), sharex=True)
    ax_loss.plot(epochs, history["train_subtype_losses"][:n], "b-", label="subtype loss (train)")
    ax_loss.plot(epochs, history["val_subtype_losses"][:n], "r-", label="subtype loss (val)")
    ax_loss.set_ylabel("cross-entropy")
    ax_loss.legend()
    ax_score.plot(epochs, history["val_subtype_accuracy"][:n], "k-", lw=2, label="accuracy (val)")
    ax_score.plot(epochs, history["val_subtype_macro_f1"][:n], "g-", lw=2, label="macro-F1 (val)")
    for k in SUBTYPES:
        ax_score.plot(epochs, history[f"val_subtype_recall_{k}"][:n], ls=":", label=f"recall subtype {k} (val)")
    ax_score.set_ylim(-0.02, 1.02)
    ax_score.set_xlabel("epoch")
    ax_score.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(filename)
    plt.close(fig)


class nnUNetTrainerMultitask_1epoch(nnUNetTrainerMultitask):
    epochs = 1


class nnUNetTrainerMultitask_5epochs(nnUNetTrainerMultitask):
    epochs = 5


class nnUNetTrainerMultitask_100epochs(nnUNetTrainerMultitask):
    """The reference setup's run length."""
    epochs = 100


class nnUNetTrainerMultitask_lambda05(nnUNetTrainerMultitask):
    subtype_loss_weight = 0.5


class nnUNetTrainerMultitask_classWeighted(nnUNetTrainerMultitask):
    class_weighted_subtype_loss = True


class nnUNetTrainerMultitask_100epochs_classWeighted(nnUNetTrainerMultitask):
    epochs = 100
    class_weighted_subtype_loss = True


class nnUNetTrainerMultitask_CPUSmoke(nnUNetTrainerMultitask):
    """2 epochs of 2 iterations: exercises every code path in seconds on a CPU (tests)."""
    epochs = 2
    iterations_per_epoch = 2
    val_iterations_per_epoch = 1


TRAINER_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")


def print_trainer_folder(argv: list[str] | None = None) -> int:
    """``nnunet-multitask trainer-path``: the folder to put in ``nnUNet_extTrainer``."""
    print(TRAINER_FOLDER)
    return 0


class nnUNetTrainerMultitask_CPUDemo(nnUNetTrainerMultitask):
    """The built-in demo's run on a CPU: 40 epochs of 25 iterations with the 3d_tiny plans."""
    epochs = 40
    iterations_per_epoch = 25
    val_iterations_per_epoch = 5
