"""Data layer: read CSV series (frames), split and window them lazily (windows), serve them (datamodule).

Depends on pandas, scikit-learn, torch.utils.data and Lightning only; never on a model.
"""

from tsattn.data.datamodule import SeriesDataModule
from tsattn.data.frames import (
    MISSING_POLICIES,
    SeriesFileNotFoundError,
    SeriesFrame,
    check_length,
    fill_gaps,
    id_csv_options,
    infer_period,
    not_text,
    read_series,
    require_pyarrow,
    separator_problem,
    time_index,
)
from tsattn.data.scaling import SCALERS, fit_scaler
from tsattn.data.windows import (
    PRESETS,
    SPLITS,
    Borders,
    WindowDataset,
    WindowIndex,
    batch_loader,
    min_rows,
    ratio_borders,
    split_borders,
    time_borders,
    window_starts,
)

__all__ = [
    "MISSING_POLICIES",
    "PRESETS",
    "SCALERS",
    "SPLITS",
    "Borders",
    "SeriesDataModule",
    "SeriesFileNotFoundError",
    "SeriesFrame",
    "WindowDataset",
    "WindowIndex",
    "batch_loader",
    "check_length",
    "fill_gaps",
    "id_csv_options",
    "fit_scaler",
    "infer_period",
    "min_rows",
    "not_text",
    "ratio_borders",
    "read_series",
    "require_pyarrow",
    "separator_problem",
    "split_borders",
    "time_borders",
    "time_index",
    "window_starts",
]
