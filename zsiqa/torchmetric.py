"""`TorchMetric`: a ZS-IQA metric as a torchmetrics `Metric` (`pip install zsiqa[torchmetrics]`).

    from zsiqa import TorchMetric
    metric = TorchMetric("dinov1_wsd", device="cuda")
    for dis, ref in loader:
        metric.update(dis, ref)          # batches, the distorted images first
    metric.compute()                     # the mean score over every pair seen, on every process

The states are a sum and a count reduced with "sum", so `compute()` under torch.distributed
is the mean over the pairs of every process, as torchmetrics syncs its own metrics. Importing
zsiqa does not import torchmetrics: this module is loaded when `zsiqa.TorchMetric` is first used.
"""
from typing import Any

import torch

from zsiqa.errors import UserError
from zsiqa.metric import split_name
from zsiqa.scorer import Scorer

try:
    from torchmetrics import Metric
except ImportError:  # an optional extra
    raise UserError("zsiqa.TorchMetric needs torchmetrics: pip install zsiqa[torchmetrics]") from None


class TorchMetric(Metric):
    """A ZS-IQA metric (`create_metric(name, **options)`) as a torchmetrics Metric.

    Args:
        name: `<backbone>_<distance>` (see `zsiqa.list_metrics()`).
        **options: the Scorer's options (device, precision, weights, batch_size, input_range, …),
            and torchmetrics' own (sync_on_compute, dist_sync_on_step, …).

    `update(dis, ref)` scores a batch (anything the Scorer takes); `compute()` gives the mean
    score over every pair seen (float32, summed in float64), synced across processes.
    """

    is_differentiable = False
    higher_is_better = False
    full_state_update = False
    total: torch.Tensor
    count: torch.Tensor

    def __init__(self, name: str, **options: Any) -> None:
        own = {k: options.pop(k) for k in list(options) if k in _METRIC_KWARGS}
        super().__init__(**own)
        self.scorer = Scorer(*split_name(name), **options)  # create_metric(name, **options)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def name(self) -> str:
        return self.scorer.name

    @property
    def lower_better(self) -> bool:
        return self.scorer.lower_better

    def update(self, dis: Any, ref: Any) -> None:
        """Score a batch of pairs (the distorted images first) and add them to the running mean."""
        scores = self.scorer.score(dis, ref)[self.scorer.distances[0]]
        self.total += scores.double().sum().to(self.total.device)
        self.count += scores.numel()

    def compute(self) -> torch.Tensor:
        """The mean score over every pair seen (by every process), float32."""
        if int(self.count) == 0:
            raise UserError("TorchMetric.compute() before any update(): no pairs were scored")
        return (self.total / self.count).float()


_METRIC_KWARGS = ("compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn", "distributed_available_fn",
                  "sync_on_compute", "compute_with_cache")
