"""Training, evaluation, prediction and the CRF search: the library calls behind the CLI's verbs.

- :mod:`.trainer` ``train``; :mod:`.evaluator` ``evaluate``, ``evaluate_checkpoint``; :mod:`.predictor`
  ``Predictor``, ``predict``; :mod:`.crf_search` ``crf_search``;
- their parts: :mod:`.builders` (config -> optimizer, schedule, criterion), :mod:`.sampler`,
  :mod:`.distributed` (torchrun), :mod:`.run_dir` (what a run writes), :mod:`.resume` (exact resume).
"""

from .builders import build_criterion, build_optimizer, image_mode, model_spec
from .crf_search import crf_search
from .distributed import Distributed, setup_distributed
from .evaluator import checkpoint_dataset, evaluate, evaluate_checkpoint
from .prediction_files import expand_inputs, predict
from .predictor import Predictor, inference_model
from .sampler import EpochSampler
from .trainer import train

__all__ = [
    "Distributed",
    "EpochSampler",
    "Predictor",
    "build_criterion",
    "build_optimizer",
    "checkpoint_dataset",
    "crf_search",
    "evaluate",
    "evaluate_checkpoint",
    "expand_inputs",
    "image_mode",
    "inference_model",
    "model_spec",
    "predict",
    "setup_distributed",
    "train",
]
