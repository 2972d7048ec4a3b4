"""The simulator: replay active learning on labeled data and measure label savings."""
from .catalog import DATASETS, load_dataset
from .datasets import Dataset, load_npz
from .models import MODELS, LogRegModel, MLPModel, make_model
from .report import labels_to_reach, savings_table, summary_markdown, write_outputs
from .pools import POOLS, load_fmnist_web, load_manyclass, load_mnist1d_chunked, load_multilabel_vocab, long_tail
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
    "POOLS",
    "load_fmnist_web",
    "load_manyclass",
    "load_mnist1d_chunked",
    "load_multilabel_vocab",
    "long_tail",
]
