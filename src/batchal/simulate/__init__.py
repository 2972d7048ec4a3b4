"""The simulator: replay active learning on labeled data and measure label savings."""
from .datasets import DATASETS, Dataset, load_dataset, load_npz
from .models import MODELS, LogRegModel, MLPModel, make_model
from .report import labels_to_reach, savings_table, summary_markdown, write_outputs
from .redundancy import RedundancySpec, make_redundant, parse_redundancy
from .runner import SimulationConfig, SimulationResult, simulate

__all__ = [
    "DATASETS",
    "Dataset",
    "load_dataset",
    "load_npz",
    "MODELS",
    "LogRegModel",
    "MLPModel",
    "make_model",
    "labels_to_reach",
    "savings_table",
    "summary_markdown",
    "write_outputs",
    "SimulationConfig",
    "SimulationResult",
    "simulate",
    "make_redundant",
    "parse_redundancy",
    "RedundancySpec",
]
