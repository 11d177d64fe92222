"""Multitask prediction: nnU-Net segmentations plus a subtype per case, and a measured fast mode.

:class:`MultitaskPredictor` is nnU-Net's ``nnUNetPredictor``: segmentations are produced and
exported exactly as ``nnUNetv2_predict`` does. Every network call is also observed by a
:class:`~nnunet_multitask.aggregation.SubtypeAccumulator`, so each case's subtype probabilities
are aggregated over all tiles, mirrors and folds of that same pass.

Speed strategies (:class:`SpeedOptions`), each a named option of ``nnUNetv2_predict_multitask``:

- ``in_process`` (``--in-process``): read, preprocess, predict and export each case in this
  process. nnU-Net's default starts preprocessing workers and a spawn pool of export workers, each
  importing torch and nnU-Net, which costs seconds per worker; for the tens of cases of a test
  set that start-up is a large share of the wall time, on a GPU and even more so on a CPU.
- ``fast_resampling`` (``--fast-resampling``): linear instead of cubic resampling of the input
  image to the plans' spacing, and nearest-neighbour instead of linear resampling of the logits
  back to the image's spacing. No effect where the image already has the plans' spacing.
- ``use_mirroring`` (``--disable_tta`` turns it off): nnU-Net's test-time mirroring, 8 network
  calls per tile in 3D.
- ``mixed_precision`` (``--mixed-precision``): bfloat16 autocast of the network on a CPU whose
  oneDNN supports it (AVX512-BF16 or AMX; measured 3x here; slower on CPUs without, where the
  option is ignored with a notice). The network's output is cast back to float32, so mirrors and
  tiles are summed as without it. On CUDA nnU-Net already autocasts to float16: no change there.
- ``direct_load`` (``--direct-load``): build the network from the plans directly instead of
  nnU-Net's trainer search, which imports every trainer module nnU-Net ships (timm and
  torchvision among them) before it looks in ``nnUNet_extTrainer``. Same network, same weights.
- ``in_plane_mirroring`` (``--in-plane-mirroring``): for 3D models, test-time mirroring only along
  the axes of the slice plane (nnU-Net puts the axis of lowest resolution first and mirrors it too):
  4 network calls per tile instead of 8.
- ``gc_freeze`` (``--gc-freeze``, command line only): once the model is loaded, move every object
  made so far (the millions of torch, nnU-Net and library objects) to the garbage collector's
  permanent generation (:func:`gc.freeze`), so that full collections while predicting and the
  interpreter's shutdown no longer walk them (shutdown alone: ~1.3 s here).
- ``case_sized_tiles`` (``--case-sized-tiles``): the sliding-window tile grows from the plans'
  patch size towards the whole case (multiples of the network's stride, up to
  :data:`CASE_TILE_MAX_PATCH_VOLUMES` patch volumes), choosing the tile for which the overlapping
  window computes the fewest voxels (:func:`case_sized_tile`). With step 0.5 the plans' tiles
  compute a voxel up to 2x per axis; a case within the budget is one network call per mirror. If
  that tile does not fit in device memory the case is redone with the plans' tiles. Not in
  ``--fast``: the subtype head then pools a field of view it was not trained on, and on the demo
  model 2 of 12 subtypes moved.

``--fast`` = in-process + mixed precision + direct load + in-plane mirroring + gc freeze
(:data:`FAST`). Tiles, step size and resampling stay nnU-Net's; what the preset costs in accuracy
and gains in time is measured by ``bench/inference_speed.py`` (``bench/README.md``).
``--fast --disable_tta`` or ``--fast --case-sized-tiles`` trade accuracy for more speed.
"""
from __future__ import annotations

import argparse
import functools
import gc
import itertools
import math
import multiprocessing
import os
import time
from contextlib import contextmanager
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
from nnunetv2.inference.export_prediction import export_prediction_from_logits
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
from nnunetv2.utilities.file_path_utilities import get_output_folder
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_multitask.aggregation import SubtypeAccumulator
from nnunet_multitask.labels import CHANNEL_SUFFIX, FILE_ENDING, OFFICIAL_SPLIT_FOLD, PROBABILITY_CSV, is_debris
from nnunet_multitask.network import SUBTYPE_HEAD_PREFIX, build_multitask_network
from nnunet_multitask.subtype_tables import (
    merge_parts,
    part_file_name,
    read_probability_table,
    write_probability_table,
    write_subtype_tables,
)


@dataclass(frozen=True)
class SpeedOptions:
    """Inference strategies; the defaults reproduce ``nnUNetv2_predict``."""

    in_process: bool = False
    fast_resampling: bool = False
    use_mirroring: bool = True
    mixed_precision: bool = False
    case_sized_tiles: bool = False
    direct_load: bool = False
    in_plane_mirroring: bool = False
    gc_freeze: bool = False


FAST = SpeedOptions(in_process=True, mixed_precision=True, direct_load=True, in_plane_mirroring=True, gc_freeze=True)

#: Class-name prefix of the trainers of :mod:`nnunet_multitask.trainer` (checked by a test).
MULTITASK_TRAINER_PREFIX = "nnUNetTrainerMultitask"

#: Largest case-sized tile, in patch volumes: bounds the network's activation memory at this
#: multiple of what the plans' patch needs (3d_fullres of ResEnc M: ~12.6 M voxels).
CASE_TILE_MAX_PATCH_VOLUMES = 8


class PredictionInputError(ValueError):
    """Bad input folder or checkpoint; the message names the file."""


@dataclass
class PredictionReport:
    """What :meth:`MultitaskPredictor.predict_folder` did."""

    probabilities: dict[str, np.ndarray] = field(default_factory=dict)  # every finished case of this part
    predicted: list[str] = field(default_factory=list)                  # cases predicted by this call
    problems: list[str] = field(default_factory=list)                   # skipped inputs, each naming its file
    network_seconds: float = 0.0                                        # time inside predict_case (in-process)
    total_seconds: float = 0.0


def with_fast_resampling(configuration: ConfigurationManager) -> ConfigurationManager:
    """A copy of ``configuration`` with linear input and nearest-neighbour logit resampling."""
    config = deepcopy(configuration.configuration)
    config["resampling_fn_data_kwargs"] = {**config["resampling_fn_data_kwargs"], "order": 1}
    config["resampling_fn_probabilities_kwargs"] = {**config["resampling_fn_probabilities_kwargs"], "order": 0}
    return ConfigurationManager(config)


def case_sized_tile(image_shape: tuple[int, ...], patch_size: tuple[int, ...], strides: tuple[int, ...],
                    max_voxels: int, step_size: float) -> tuple[int, ...]:
    """The sliding-window tile for one case of ``image_shape`` (spatial voxels, same axes as
    ``patch_size``).

    Candidates are multiples of ``strides`` (the network's total downsampling per axis) from
    ``patch_size`` up to ``image_shape`` rounded up, holding at most ``max_voxels``. Of those, the
    one for which nnU-Net's sliding window (``step_size``, a fraction of the tile) computes the
    fewest voxels (tiles x tile volume); ties go to fewer tiles. A case within the budget is one
    tile; the plans' patch is a candidate, so the work never exceeds the plans' tiling.
    """
    axes = [range(p, max(p, math.ceil(n / s) * s) + 1, s) for n, p, s in zip(image_shape, patch_size, strides)]

    def work(tile: tuple[int, ...]) -> tuple[int, int]:
        padded = [max(n, t) for n, t in zip(image_shape, tile)]
        n_tiles = math.prod(len(steps) for steps in compute_steps_for_sliding_window(padded, tile, step_size))
        return n_tiles * math.prod(tile), n_tiles

    return min((tile for tile in itertools.product(*axes) if math.prod(tile) <= max_voxels), key=work)


def total_strides(configuration: ConfigurationManager) -> tuple[int, ...]:
    """Per spatial axis, the product of the network's pooling strides."""
    return tuple(math.prod(axis) for axis in zip(*configuration.pool_op_kernel_sizes))


def with_patch_size(configuration: ConfigurationManager, patch_size: tuple[int, ...]) -> ConfigurationManager:
    """A copy of ``configuration`` whose patch (the predictor's tile) is ``patch_size``."""
    return ConfigurationManager({**configuration.configuration, "patch_size": list(patch_size)})


@functools.cache
def bf16_autocast_supported() -> bool:
    """Whether this CPU runs bfloat16 convolutions natively (oneDNN with AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # torch built without oneDNN
        return False


def find_input_cases(folder: Path) -> tuple[dict[str, Path], list[str]]:
    """``{case_id: image}`` for every readable ``<case>_0000.nii.gz`` in ``folder``, and one
    problem string (naming the file) for each file that cannot be predicted.

    Raises:
        PredictionInputError: the folder is missing or holds no image at all.
    """
    if not folder.is_dir():
        raise PredictionInputError(f"{folder}: input folder does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not is_debris(p))
    if not files:
        raise PredictionInputError(f"{folder}: no images (expected <case>{CHANNEL_SUFFIX}{FILE_ENDING} files)")
    cases, problems = {}, []
    for path in files:
        if not path.name.endswith(FILE_ENDING):
            problems.append(f"{path}: wrong file ending (expected {FILE_ENDING})")
        elif not path.name.endswith(CHANNEL_SUFFIX + FILE_ENDING):
            problems.append(f"{path}: no {CHANNEL_SUFFIX} channel suffix (expected <case>{CHANNEL_SUFFIX}{FILE_ENDING})")
        else:
            try:
                image = nib.load(path)
                if len(image.shape) != 3:
                    raise ValueError(f"expected a 3D image, got shape {image.shape}")
                np.asanyarray(image.dataobj)  # decompresses everything: finds truncated files
            except Exception as error:  # nibabel raises many types for corrupt files
                problems.append(f"{path}: cannot read NIfTI ({type(error).__name__}: {error})")
                continue
            cases[path.name[: -len(CHANNEL_SUFFIX + FILE_ENDING)]] = path
    if not cases and not problems:
        raise PredictionInputError(f"{folder}: no images")
    return cases, problems


class MultitaskPredictor(nnUNetPredictor):
    """``nnUNetPredictor`` whose every case prediction also yields subtype probabilities."""

    #: ``(n_subtypes,)`` probabilities of the case most recently predicted.
    last_subtype_probabilities: torch.Tensor | None = None

    def __init__(self, *args, fast_resampling: bool = False, mixed_precision: bool = False,
                 case_sized_tiles: bool = False, direct_load: bool = False, in_plane_mirroring: bool = False,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.fast_resampling = fast_resampling
        self.mixed_precision = mixed_precision
        self.case_sized_tiles = case_sized_tiles
        self.direct_load = direct_load
        self.in_plane_mirroring = in_plane_mirroring
        self.subtype_probabilities: dict[str, np.ndarray] = {}
        if mixed_precision and self.device.type == "cpu" and not bf16_autocast_supported():
            print("--mixed-precision ignored: this CPU has no native bfloat16 (it would be slower)")

    @classmethod
    def for_speed(cls, speed: SpeedOptions, device: torch.device, tile_step_size: float = 0.5,
                  **kwargs) -> "MultitaskPredictor":
        """A predictor with the strategies of ``speed`` (``in_process`` is an argument of
        :meth:`predict_folder`); other keywords go to ``nnUNetPredictor``."""
        return cls(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=speed.use_mirroring,
                   perform_everything_on_device=True, device=device, fast_resampling=speed.fast_resampling,
                   mixed_precision=speed.mixed_precision, case_sized_tiles=speed.case_sized_tiles,
                   direct_load=speed.direct_load, in_plane_mirroring=speed.in_plane_mirroring, **kwargs)

    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds,
                                             checkpoint_name: str = "checkpoint_final.pth"):
        """nnU-Net's loading (with ``direct_load``: without its trainer search where it can), plus a
        clear error for a checkpoint without subtype head."""
        where = f"{model_training_output_dir} ({checkpoint_name}, folds {use_folds})"
        try:
            if not (self.direct_load and self._load_multitask_model(Path(model_training_output_dir), use_folds,
                                                                    checkpoint_name)):
                super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        except RuntimeError as error:
            if SUBTYPE_HEAD_PREFIX in str(error):
                raise PredictionInputError(f"{where}: checkpoint has no subtype head weights: {error}") from None
            raise
        if not hasattr(self.network, "subtype_head"):
            raise PredictionInputError(
                f"{where}: trained with {self.trainer_name}, whose network has no subtype head; "
                "train with nnUNetTrainerMultitask (or use stock nnUNetv2_predict for segmentation only)"
            )
        if self.fast_resampling:
            self.configuration_manager = with_fast_resampling(self.configuration_manager)
        if self.in_plane_mirroring and self.allowed_mirroring_axes and len(self.configuration_manager.patch_size) == 3:
            self.allowed_mirroring_axes = tuple(axis for axis in self.allowed_mirroring_axes if axis != 0)

    def _load_multitask_model(self, folder: Path, use_folds, checkpoint_name: str) -> bool:
        """Load the model as nnU-Net does, but build the multitask network from the plans
        directly instead of finding the trainer class by nnU-Net's search, which imports every
        trainer module nnU-Net ships (timm and torchvision among them) and then ours.

        Only for checkpoints of this package's trainers (name ``nnUNetTrainerMultitask*``, weights
        with the subtype head) whose weights load strictly into that network; False, with nothing
        loaded, otherwise (nnU-Net's loading then decides)."""
        if use_folds is None:
            use_folds = self.auto_detect_available_folds(str(folder), checkpoint_name)
        folds = [use_folds] if isinstance(use_folds, str) else list(use_folds)
        checkpoints = [torch.load(folder / f"fold_{fold}" / checkpoint_name, map_location="cpu", weights_only=False)
                       for fold in folds]
        parameters = [checkpoint["network_weights"] for checkpoint in checkpoints]
        trainer_name = checkpoints[0]["trainer_name"]
        if not (trainer_name.startswith(MULTITASK_TRAINER_PREFIX)
                and any(key.startswith(SUBTYPE_HEAD_PREFIX) for key in parameters[0])):
            return False
        plans_manager = PlansManager(load_json(str(folder / "plans.json")))
        dataset_json = load_json(str(folder / "dataset.json"))
        configuration_manager = plans_manager.get_configuration(checkpoints[0]["init_args"]["configuration"])
        network = build_multitask_network(
            configuration_manager, determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
            plans_manager.get_label_manager(dataset_json).num_segmentation_heads, deep_supervision=False)
        try:
            network.load_state_dict(parameters[0])
        except RuntimeError:  # a subclass trainer with its own architecture
            return False
        self.manual_initialization(network, plans_manager, configuration_manager, parameters, dataset_json,
                                   trainer_name, checkpoints[0].get("inference_allowed_mirroring_axes"))
        return True

    @contextmanager
    def _mixed_precision(self):
        """bfloat16 autocast of the network's convolutions, its output cast back to float32 so that
        nnU-Net sums mirrors and tiles as it does without autocast."""
        if not (self.mixed_precision and self.device.type == "cpu" and bf16_autocast_supported()):
            yield
            return
        handle = self.network.register_forward_hook(
            lambda module, inputs, output: output.float() if isinstance(output, torch.Tensor) else None)
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yield
        finally:
            handle.remove()

    @contextmanager
    def _tiles(self, configuration: ConfigurationManager):
        """Within the block the predictor tiles with ``configuration``'s patch size."""
        plans_configuration, self.configuration_manager = self.configuration_manager, configuration
        try:
            yield
        finally:
            self.configuration_manager = plans_configuration

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor) -> torch.Tensor:
        """nnU-Net's sliding window over ``(C, *spatial)``, with the mixed-precision and
        case-sized-tile strategies when they are on."""
        patch = tuple(self.configuration_manager.patch_size)
        tile = patch
        if self.case_sized_tiles:
            tile = case_sized_tile(tuple(input_image.shape[-len(patch):]), patch,
                                   total_strides(self.configuration_manager),
                                   CASE_TILE_MAX_PATCH_VOLUMES * math.prod(patch), self.tile_step_size)
        with self._mixed_precision():
            if tile == patch:
                return super().predict_sliding_window_return_logits(input_image)
            try:
                with self._tiles(with_patch_size(self.configuration_manager, tile)):
                    return super().predict_sliding_window_return_logits(input_image)
            except torch.OutOfMemoryError:
                print(f"case-sized tile {tile} does not fit in {self.device} memory; using the plans' tiles")
                return super().predict_sliding_window_return_logits(input_image)

    def _recording_subtypes(self, predict, data: torch.Tensor) -> torch.Tensor:
        with SubtypeAccumulator(self.network) as accumulator:
            logits = predict(data)
        self.last_subtype_probabilities = accumulator.probabilities()
        return logits

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        return self._recording_subtypes(super().predict_logits_from_preprocessed_data, data)

    def predict_case(self, data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Preprocessed ``(C, *spatial)`` image -> (segmentation logits ``(K_seg, *spatial)`` on the
        CPU, subtype probabilities ``(n_subtypes,)``).

        After ``manual_initialization`` (no fold parameters: the trainer's live network) the network
        is used as it is; otherwise every loaded fold contributes."""
        if self.list_of_parameters is None:
            logits = self._recording_subtypes(self.predict_sliding_window_return_logits, data).cpu()
        else:
            logits = self.predict_logits_from_preprocessed_data(data)
        return logits, self.last_subtype_probabilities

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = 8):
        """nnU-Net's pipelined prediction; records each case's probabilities under its output name."""

        def recording(iterator):
            for item in iterator:
                yield item
                # resumed only once nnU-Net has predicted this item
                if item["ofile"] is not None:
                    self.subtype_probabilities[os.path.basename(item["ofile"])] = \
                        self.last_subtype_probabilities.numpy()

        return super().predict_from_data_iterator(recording(data_iterator), save_probabilities,
                                                  num_processes_segmentation_export)

    def _predict_in_process(self, cases: dict[str, Path], output_folder: Path, save_probabilities: bool,
                            report: PredictionReport) -> None:
        preprocessor = self.configuration_manager.preprocessor_class(verbose=False)
        for case, image in cases.items():
            try:
                data, _, properties = preprocessor.run_case([str(image)], None, self.plans_manager,
                                                            self.configuration_manager, self.dataset_json)
                start = time.perf_counter()
                logits, probabilities = self.predict_case(torch.from_numpy(data))
                report.network_seconds += time.perf_counter() - start
                export_prediction_from_logits(logits, properties, self.configuration_manager, self.plans_manager,
                                              self.dataset_json, str(output_folder / case), save_probabilities)
            except Exception as error:  # one bad case must not cost the others
                report.problems.append(f"{image}: prediction failed ({type(error).__name__}: {error})")
                continue
            self.subtype_probabilities[case] = probabilities.numpy()

    def predict_folder(self, input_folder: str | os.PathLike, output_folder: str | os.PathLike, *,
                       in_process: bool = False, save_probabilities: bool = False,
                       continue_prediction: bool = False, num_processes_preprocessing: int = 3,
                       num_processes_segmentation_export: int = 3, num_parts: int = 1,
                       part_id: int = 0) -> PredictionReport:
        """Predict every ``<case>_0000.nii.gz`` of ``input_folder`` into ``output_folder``.

        Writes one segmentation per case as nnU-Net does, and the subtype CSVs
        (:mod:`nnunet_multitask.subtype_tables`) holding exactly the finished cases. Unreadable
        inputs are skipped and reported; the other cases are still predicted.
        """
        start = time.perf_counter()
        if not 0 <= part_id < num_parts:
            raise ValueError(f"part_id must be in [0, {num_parts - 1}], got {part_id}")
        input_folder, output_folder = Path(input_folder), Path(output_folder)
        all_cases, problems = find_input_cases(input_folder)
        part = {case: all_cases[case] for case in sorted(all_cases)[part_id::num_parts]}
        table_path = output_folder / (PROBABILITY_CSV if num_parts == 1 else part_file_name(part_id, num_parts))
        previous = read_probability_table(table_path) if continue_prediction else {}
        report = PredictionReport(problems=problems)
        self.subtype_probabilities = {c: p for c, p in previous.items()
                                      if c in part and self._segmentation_path(output_folder, c).is_file()}
        todo = {c: image for c, image in part.items() if c not in self.subtype_probabilities}
        output_folder.mkdir(parents=True, exist_ok=True)
        try:
            if todo and in_process:
                save_json(self.dataset_json, str(output_folder / "dataset.json"), sort_keys=False)
                save_json(self.plans_manager.plans, str(output_folder / "plans.json"), sort_keys=False)
                self._predict_in_process(todo, output_folder, save_probabilities, report)
            elif todo:
                self.predict_from_files([[str(image)] for image in todo.values()],
                                        [str(output_folder / case) for case in todo], save_probabilities,
                                        overwrite=True, num_processes_preprocessing=num_processes_preprocessing,
                                        num_processes_segmentation_export=num_processes_segmentation_export)
        finally:
            report.probabilities = {c: p for c, p in self.subtype_probabilities.items()
                                    if self._segmentation_path(output_folder, c).is_file()}
            report.predicted = sorted(c for c in todo if c in report.probabilities)
            self._write_tables(output_folder, table_path, report.probabilities, num_parts)
        report.total_seconds = time.perf_counter() - start
        return report

    def _segmentation_path(self, output_folder: Path, case: str) -> Path:
        return output_folder / (case + self.dataset_json["file_ending"])

    @staticmethod
    def _write_tables(output_folder: Path, table_path: Path, probabilities: dict, num_parts: int) -> None:
        if num_parts == 1:
            write_subtype_tables(output_folder, probabilities)
            return
        write_probability_table(table_path, probabilities)
        try:
            merge_parts(output_folder)
        except FileNotFoundError as pending:
            print(f"subtype tables not merged yet: {pending}")


def _device(name: str) -> torch.device:
    if name == "cpu":
        torch.set_num_threads(multiprocessing.cpu_count())
        return torch.device("cpu")
    if name == "cuda":
        # as nnUNetv2_predict: multithreading in torch does not help nnU-Net when it runs on the GPU
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
        return torch.device("cuda")
    return torch.device(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nnUNetv2_predict_multitask",
        description="nnUNetv2_predict plus subtype_results.csv / subtype_probabilities.csv in -o. "
                    "Same arguments as nnUNetv2_predict, plus --fast and its named strategies.")
    parser.add_argument("-i", required=True, help="input folder of <case>_0000.nii.gz images")
    parser.add_argument("-o", required=True, help="output folder (segmentations and subtype CSVs)")
    parser.add_argument("-d", required=True, help="dataset ID or name")
    parser.add_argument("-p", default="nnUNetResEncUNetMPlans", help="plans identifier")
    parser.add_argument("-tr", default="nnUNetTrainerMultitask", help="trainer the model was trained with")
    parser.add_argument("-c", default="3d_fullres", help="configuration")
    parser.add_argument("-f", nargs="+", default=[str(OFFICIAL_SPLIT_FOLD)],
                        help=f"folds to ensemble (default {OFFICIAL_SPLIT_FOLD}: the official train/validation split)")
    parser.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name")
    parser.add_argument("-step_size", type=float, default=0.5, help="sliding-window step, fraction of the patch")
    parser.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    parser.add_argument("-device", default="cuda", help="cuda, cpu or mps")
    parser.add_argument("-npp", type=int, default=3, help="preprocessing workers")
    parser.add_argument("-nps", type=int, default=3, help="segmentation export workers")
    parser.add_argument("--save_probabilities", action="store_true", help="also write the .npz class probabilities")
    parser.add_argument("--continue_prediction", action="store_true",
                        help="keep finished cases (segmentation and CSV row present), predict the rest")
    parser.add_argument("-num_parts", type=int, default=1, help="split the cases into this many parts")
    parser.add_argument("-part_id", type=int, default=0, help="which part this run predicts (0-based)")
    parser.add_argument("--fast", action="store_true",
                        help="preset: --in-process --mixed-precision --direct-load --in-plane-mirroring --gc-freeze")
    parser.add_argument("--in-process", action="store_true", help="no worker processes (see module docs)")
    parser.add_argument("--mixed-precision", action="store_true",
                        help="bfloat16 network on CPUs with native support (CUDA: already float16)")
    parser.add_argument("--case-sized-tiles", action="store_true",
                        help=f"one tile per case, up to {CASE_TILE_MAX_PATCH_VOLUMES} patch volumes")
    parser.add_argument("--direct-load", action="store_true",
                        help="build our trainer's network without nnU-Net's search through all its trainers")
    parser.add_argument("--in-plane-mirroring", action="store_true",
                        help="3D: test-time mirroring within the slice plane only (4 instead of 8 passes)")
    parser.add_argument("--gc-freeze", action="store_true",
                        help="freeze the garbage collector's heap after loading (faster collections and exit)")
    parser.add_argument("--fast-resampling", action="store_true", help="linear input / nearest logit resampling")
    return parser


def speed_options(args: argparse.Namespace) -> SpeedOptions:
    """The preset (``--fast``) or the defaults, plus every strategy named on the command line."""
    base = FAST if args.fast else SpeedOptions()
    return SpeedOptions(in_process=base.in_process or args.in_process,
                        fast_resampling=base.fast_resampling or args.fast_resampling,
                        use_mirroring=base.use_mirroring and not args.disable_tta,
                        mixed_precision=base.mixed_precision or args.mixed_precision,
                        case_sized_tiles=base.case_sized_tiles or args.case_sized_tiles,
                        direct_load=base.direct_load or args.direct_load,
                        in_plane_mirroring=base.in_plane_mirroring or args.in_plane_mirroring,
                        gc_freeze=base.gc_freeze or args.gc_freeze)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    speed = speed_options(args)
    folds = [f if f == "all" else int(f) for f in args.f]
    predictor = MultitaskPredictor.for_speed(speed, _device(args.device), args.step_size, verbose=False,
                                             allow_tqdm=not speed.in_process)
    try:
        predictor.initialize_from_trained_model_folder(get_output_folder(args.d, args.tr, args.p, args.c), folds,
                                                       args.chk)
        if speed.gc_freeze:
            gc.freeze()
        report = predictor.predict_folder(
            args.i, args.o, in_process=speed.in_process, save_probabilities=args.save_probabilities,
            continue_prediction=args.continue_prediction, num_processes_preprocessing=args.npp,
            num_processes_segmentation_export=args.nps, num_parts=args.num_parts, part_id=args.part_id)
    except PredictionInputError as error:
        print(f"nnUNetv2_predict_multitask: error: {error}")
        return 1
    print(f"predicted {len(report.predicted)} case(s) in {report.total_seconds:.1f} s; "
          f"{len(report.probabilities)} row(s) in {args.o}")
    for problem in report.problems:
        print(f"skipped: {problem}")
    return 1 if report.problems else 0


def entry_point() -> None:
    raise SystemExit(main())
