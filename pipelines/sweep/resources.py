"""What one cell needs from the Ray cluster, whether it can ever be scheduled, and how many cells the
sweep runs at once. Pure arithmetic over node shapes (tested without Ray), plus one reader of the live
cluster.

Counting is per node, not over the cluster's total: a training worker must fit on one node, so two
nodes of 2 CPUs hold two 1.5-CPU workers, not three, and a cell that no node can hold would wait for
resources forever instead of failing."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from pipelines.config import FinetuneConfig, StudyConfig
from pipelines.errors import ClusterTooSmallError

log = logging.getLogger(__name__)

# The Tune trial that drives a cell asks for this much CPU (Tune refuses 0); it sits on some node beside
# the cell's training workers, so a node is counted with this much less.
TRIAL_CPU = 0.01
# A node group without a maximum size (max_count -1 in the autoscaler's config).
UNBOUNDED = 1_000_000
_EPS = 1e-9


@dataclass(frozen=True)
class CellNeeds:
    num_workers: int
    cpus_per_worker: float
    gpus_per_worker: float = 0.0

    @classmethod
    def of(cls, ft: FinetuneConfig) -> CellNeeds:
        # ScalingConfig(use_gpu=True) gives each worker one GPU besides its CPUs (pipelines/finetune.py).
        return cls(ft.num_workers, ft.cpus_per_worker, 1.0 if ft.use_gpu else 0.0)

    def describe(self) -> str:
        gpu = f" + {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else ""
        return f"{self.num_workers} training worker(s) × {self.cpus_per_worker:g} CPU{gpu}"


@dataclass(frozen=True)
class NodeShape:
    resources: Mapping[str, float]
    count: int = 1  # identical nodes: 1 for a live node, a node group's maximum size when autoscaling

    def describe(self) -> str:
        shown = ", ".join(f"{k}: {v:g}" for k, v in sorted(self.resources.items()) if k in ("CPU", "GPU"))
        return ("" if self.count == 1 else f"{'∞' if self.count >= UNBOUNDED else self.count} × ") + "{" + shown + "}"


def worker_slots(resources: Mapping[str, float], needs: CellNeeds) -> int:
    """How many of the cell's training workers one node holds."""
    cpu = resources.get("CPU", 0.0) - TRIAL_CPU
    slots = math.floor(cpu / needs.cpus_per_worker + _EPS) if cpu > 0 else 0
    if needs.gpus_per_worker:
        slots = min(slots, math.floor(resources.get("GPU", 0.0) / needs.gpus_per_worker + _EPS))
    return max(0, slots)


def total_slots(nodes: list[NodeShape], needs: CellNeeds) -> int:
    return sum(worker_slots(n.resources, needs) * n.count for n in nodes)


@dataclass(frozen=True)
class Capacity:
    live: list[NodeShape]
    # Node groups an autoscaler may start (KubeRay, the cluster launcher); empty on a fixed cluster. A GPU
    # group at 0 replicas is real capacity: the sweep's placement groups are what make it scale up.
    autoscale: list[NodeShape] = field(default_factory=list)
    # False when nodes may be added that nothing here can see: an autoscaler watches the cluster but
    # publishes no node groups, which is every KubeRay cluster on Ray 2.60 (the in-tree autoscaler's state).
    # A shortfall is then a warning, not an error: only work that asks for the nodes makes them appear.
    known: bool = True

    def slots(self, needs: CellNeeds) -> int:
        return max(total_slots(self.live, needs), total_slots(self.autoscale, needs))

    def describe(self) -> str:
        text = f"{len(self.live)} live node(s): " + ", ".join(n.describe() for n in self.live)
        if self.autoscale:
            text += "; may scale to: " + ", ".join(n.describe() for n in self.autoscale)
        elif not self.known:
            text += "; node groups an autoscaler may add: unknown"
        return text


def _proceed_unknown(what: str, capacity: Capacity, fixes: list[str]) -> None:
    """The shortfall on a cluster whose autoscaler's node groups cannot be read, logged instead of raised."""
    log.warning(
        "%s, more than the live nodes hold (%s). The cluster's autoscaler publishes no node groups (KubeRay on "
        "Ray 2.60), so the run goes on: its resource request is what makes the autoscaler add nodes. If no "
        "node group can hold it, the work waits for resources forever: give the RayCluster a worker group of "
        "that shape (infra/base/raycluster.yaml), or %s", what, capacity.describe(), ", or ".join(fixes))


def check_fits(needs: CellNeeds, capacity: Capacity, local_cluster: bool = False) -> None:
    """Fails, naming the fix, when no placement of one cell's workers exists."""
    if capacity.slots(needs) >= needs.num_workers:
        return
    fixes = ["lower finetune.num_workers", "lower finetune.cpus_per_worker"]
    if needs.gpus_per_worker:
        cpu_only = CellNeeds(needs.num_workers, needs.cpus_per_worker)
        if capacity.slots(cpu_only) >= needs.num_workers:
            fixes = ["set finetune.use_gpu=false", "lower finetune.num_workers"]
        fixes.append("add GPU nodes")
    else:
        fixes.append("add nodes with more CPUs")
    if local_cluster:
        fixes.append("raise ray.num_cpus (the local cluster's logical CPUs)")
    what = f"one cell needs {needs.describe()}, each worker on one node beside its {TRIAL_CPU:g}-CPU Tune trial"
    if not capacity.known:
        _proceed_unknown(what, capacity, fixes)
        return
    raise ClusterTooSmallError(
        f"{what}, but the cluster holds only {capacity.slots(needs)} such worker(s) ({capacity.describe()}); "
        + ", or ".join(fixes))


def choose_concurrency(setting: int | str | None, needs: CellNeeds, capacity: Capacity,
                       n_pending: int) -> tuple[int, str]:
    """(cells at once, why): an explicit sweep.max_concurrent is kept; "auto"/None fills the cluster."""
    fit = capacity.slots(needs) // needs.num_workers
    if isinstance(setting, int):
        why = f"sweep.max_concurrent={setting}"
        if setting > fit:
            why += f" (the cluster holds {fit} cell(s) at once: the others wait for resources)"
        return setting, why
    if not capacity.known and fit < n_pending:
        # Only pending trials make an autoscaler add nodes: filling the live nodes alone would run the
        # grid one cell at a time on a cluster whose GPU group starts at 0 replicas. Tune's own cap on
        # pending placement groups keeps the requests bounded.
        return n_pending, (f"auto: the live nodes hold {fit} cell(s) at once and the autoscaler's node groups "
                           f"are unknown: all {n_pending} pending cell(s) are submitted, the autoscaler adds "
                           "the nodes they ask for (set sweep.max_concurrent to cap them)")
    n = max(1, min(fit, n_pending))
    return n, (f"auto: the cluster holds {capacity.slots(needs)} worker slot(s) for {needs.describe()} "
               f"per cell = {fit} cell(s) at once, {n_pending} pending")


def read_capacity(local_cluster: bool = False) -> Capacity:
    """The connected cluster's alive nodes, and the node groups its autoscaler may add. A cluster this run
    started itself (`local_cluster`) has no autoscaler; on one an autoscaler watches, unreadable groups
    leave the capacity unknown."""
    import ray

    live = [NodeShape(dict(n["Resources"])) for n in ray.nodes() if n.get("Alive")]
    groups: list[NodeShape] = []
    try:
        # Written by the autoscaler (KubeRay, cluster launcher); absent on a fixed or local cluster. Ray
        # Train reads the same record for its own (total-only) check.
        config = ray._private.state.state.get_cluster_config()
    except Exception as exc:  # an internal API: a failure must not stop the sweep, only this refinement
        log.debug("no autoscaler config readable: %s", exc)
        config = None
    if config is not None:
        for group in config.node_group_configs:
            count = UNBOUNDED if group.max_count == -1 else int(group.max_count)
            if count > 0:
                groups.append(NodeShape({k: float(v) for k, v in group.resources.items()}, count))
    return Capacity(live, groups, known=local_cluster or config is not None or not autoscaler_running())


def autoscaler_running() -> bool:
    """Whether an autoscaler with node groups watches the connected cluster (KubeRay's sidecar, the cluster
    launcher's monitor): v2 marks itself in the GCS; v1's monitor writes a report to the KV on each update.
    Every `ray start`/`ray.init` cluster runs a read-only v1 monitor too, whose report names each node's
    type after the node itself: that is a fixed cluster, where the live nodes are all there is."""
    from ray._private import ray_constants
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    try:
        if is_autoscaler_v2(fetch_from_server=True):
            return True
        raw = _internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS)
        mapping = (json.loads(raw).get("autoscaler_report") or {}).get("node_type_mapping") or {} if raw else {}
    except Exception as exc:  # internal APIs: unreadable counts as no autoscaler (the check stays strict)
        log.debug("autoscaler status not readable: %s", exc)
        return False
    return any(kind != format_readonly_node_type(node) for node, kind in mapping.items())


def gpus_to_come(cfg: StudyConfig) -> float:
    """GPUs the connected cluster lacks now but gets when work asks for them: its autoscaler's GPU groups
    (their total), or, where the groups cannot be read, no bound (inf) when the study itself runs on GPUs
    (finetune.use_gpu, evaluate.num_gpus): its GPU nodes must then come from such a group."""
    local = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    capacity = read_capacity(local_cluster=local)
    declared = sum(n.resources.get("GPU", 0.0) * n.count for n in capacity.autoscale)
    if declared:
        return float(declared)
    if not capacity.known and (cfg.finetune.use_gpu or cfg.evaluate.num_gpus):
        return math.inf
    return 0.0


def evaluation_needs(cfg: StudyConfig) -> dict[str, float]:
    """One evaluation worker's Ray resources, as node resource keys (memory in bytes)."""
    ev = cfg.evaluate
    need = {"CPU": ev.num_cpus, "GPU": ev.num_gpus}
    if ev.memory_gb:
        need["memory"] = ev.memory_gb * 1024**3
    return {k: v for k, v in need.items() if v}


def check_evaluation_fits(need: Mapping[str, float], capacity: Capacity, local_cluster: bool = False) -> None:
    """Fails, naming the fix, when no node (live, or one the autoscaler may add) holds an evaluation worker:
    Ray would otherwise queue the worker forever after the whole grid has trained."""
    nodes = capacity.live + capacity.autoscale
    if any(all(n.resources.get(k, 0.0) + _EPS >= v for k, v in need.items()) for n in nodes):
        return
    shown = ", ".join(f"{k} {v / 1024**3:g} GiB" if k == "memory" else f"{k} {v:g}" for k, v in need.items())
    fixes = ["lower evaluate.num_cpus", "lower evaluate.memory_gb"]
    if need.get("GPU"):
        fixes = ["add GPU nodes", "set evaluate.num_gpus=0 with a CPU backend (generate.backend=transformers)"] + fixes
    if local_cluster:
        fixes.append("raise ray.num_cpus (the local cluster's logical CPUs)")
    if not capacity.known:
        _proceed_unknown(f"an evaluation worker needs {shown} on one node", capacity, fixes)
        return
    raise ClusterTooSmallError(f"an evaluation worker needs {shown} on one node, but no node of the cluster "
                               f"holds that ({capacity.describe()}): " + ", or ".join(fixes))


def check_cluster(cfg: StudyConfig, train: bool = True) -> Capacity:
    """Fails before any work when one cell's training workers (train=True) or one evaluation worker of
    `cfg` cannot fit the connected cluster."""
    # On a cluster this run started itself, its logical CPUs are a setting the user can raise.
    local = not (cfg.ray.address or os.environ.get("RAY_ADDRESS"))
    capacity = read_capacity(local_cluster=local)
    if train:
        check_fits(CellNeeds.of(cfg.finetune), capacity, local_cluster=local)
    check_evaluation_fits(evaluation_needs(cfg), capacity, local_cluster=local)
    return capacity


def plan_concurrency(cfg: StudyConfig, n_pending: int) -> int:
    """Checks that one cell fits the connected cluster and returns how many run at once (logged)."""
    capacity = check_cluster(cfg)
    n, why = choose_concurrency(cfg.sweep.max_concurrent, CellNeeds.of(cfg.finetune), capacity, n_pending)
    log.info("sweep concurrency %d: %s", n, why)
    return n
