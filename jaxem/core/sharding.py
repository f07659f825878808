"""The data axis over several devices: a one-axis mesh, and passes that psum their statistics.

EM's statistics (the log-likelihood, the expected sufficient statistics, the gradient of Q) are
sums over rows, so a pass splits the row blocks over the devices of a mesh, lets every device sum
its own blocks (``jax.shard_map``), and adds the parts with one ``psum``. The M-step then runs on
the summed statistics, identically on every device. The result equals the single-device fit up to
the order of float additions.

Several processes (hosts): start every process with ``jax.distributed.initialize()``
(coordinator address, number of processes and process id from arguments or the cluster's
environment, e.g. SLURM), then make the same call in every process, each with **its own rows**
(its own files, or its own slice of one); ``devices="all"`` then shards over the devices of all
processes and sums the statistics over all of them, so every process gets the same result, that
of one process fitting all the rows::

    import jax, jaxem as jem
    jax.distributed.initialize()          # once per process, before any other JAX call
    mine = f"/data/part-{jax.process_index()}.npy"
    result = jem.fit_chunked(model, mine, key=jax.random.key(0), devices="all")

At the start the processes compare (:func:`pool_processes`) the model, the settings and the
restart keys, and fail together with one message if they differ; the initial parameters are
process 0's (drawn from its rows, or given) and the row counts are added up. Each process's rows
are padded to the largest share (zero weight), so the shares need not be equal. On CPUs the
collectives need ``jax.config.update("jax_cpu_collectives_implementation", "gloo")`` before
``initialize``.

This module sits in ``core`` because the compiled in-memory runner splits its passes with it; the
chunked runner (:mod:`jaxem.scale.chunked`) uses it too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def data_mesh(devices) -> Mesh | None:
    """A one-axis mesh named ``"data"`` over ``devices``.

    Args:
        devices: ``None`` (no mesh: the single-device path), ``"all"`` (``jax.devices()``, every
            device of every process), a sequence of devices, or a :class:`jax.sharding.Mesh`
            with a ``"data"`` axis.

    Returns:
        The mesh, or ``None`` for ``devices=None`` or a single device.
    """
    if devices is None:
        return None
    if isinstance(devices, Mesh):
        if DATA_AXIS not in devices.axis_names or len(devices.axis_names) != 1:
            raise ValueError(f"a mesh for EM needs exactly one axis named {DATA_AXIS!r}, got "
                             f"{devices.axis_names}")
        return devices if devices.size > 1 else None
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"devices must be None, 'all', a list of devices or a Mesh, got "
                             f"{devices!r}")
        devices = jax.devices()
    if not isinstance(devices, Sequence) or not devices:
        raise ValueError(f"devices must be None, 'all', a non-empty list of devices or a Mesh, "
                         f"got {devices!r}")
    if len(devices) == 1:
        return None
    return Mesh(np.asarray(devices, dtype=object), (DATA_AXIS,))


def n_shards(mesh: Mesh | None) -> int:
    """How many parts the row blocks are split into (1 without a mesh)."""
    return 1 if mesh is None else mesh.size


def platform(X, mesh: Mesh | None) -> str:
    """The platform (``"cpu"``, ``"gpu"``, ``"tpu"``) the passes over ``X`` run on: the mesh's
    devices', else the devices holding ``X`` (a jax array), else the default backend's."""
    if mesh is not None:
        return mesh.devices.flat[0].platform
    devices = getattr(X, "devices", None)
    held = devices() if callable(devices) else ()
    return next(iter(held)).platform if held else jax.default_backend()


def sharded_pass(sweep: Callable, mesh: Mesh | None, sum_aux: bool = True) -> Callable:
    """``sweep(params, blocks, temperature) -> (objective, aux)`` over a mesh.

    Each device runs ``sweep`` on its share of ``blocks`` (split along the block axis, whose length
    must be a multiple of the mesh size) with the same ``params`` and ``temperature``; the
    objectives are summed with ``psum``, and so are the auxiliary statistics when ``sum_aux``
    (else, e.g. per-row responsibilities, they stay split along the block axis). Without a mesh,
    ``sweep`` itself is returned.
    """
    if mesh is None:
        return sweep

    def run(params, blocks, temperature=None):
        # Parameters go in as explicit replicated arguments, not closed over: a closed-over array
        # placed on the mesh outside would carry a sharding that clashes inside shard_map.
        def local(params, local_blocks, temperature):
            # Each device's sums are its own (varying over the data axis) until the psum below.
            # Marked so, a gradient a sweep takes with respect to the parameters (the chunked
            # gradient M-step's Q) stays this device's part; left replicated, JAX sums it over
            # the devices already and the psum would count it once per device again.
            params = jax.lax.pcast(params, DATA_AXIS, to="varying")
            objective, aux = sweep(params, local_blocks, temperature)
            objective = jax.lax.psum(objective, DATA_AXIS)
            return objective, jax.lax.psum(aux, DATA_AXIS) if sum_aux else aux

        out_specs = (P(), P() if sum_aux else P(DATA_AXIS))
        return jax.shard_map(local, mesh=mesh, in_specs=(P(), P(DATA_AXIS), P()),
                             out_specs=out_specs)(params, blocks, temperature)

    return run


def local_shards(mesh: Mesh | None) -> int:
    """How many parts this process's rows are split into: its own devices in the mesh (all of
    them with one process; 1 without a mesh)."""
    if mesh is None:
        return 1
    return sum(d.process_index == jax.process_index() for d in mesh.devices.flat)


def _several_processes(mesh: Mesh | None) -> bool:
    return mesh is not None and jax.process_count() > 1


def put_blocks(blocks: np.ndarray, mesh: Mesh | None) -> jax.Array:
    """Place host ``blocks [n_blocks, ...]`` on the devices, split along the block axis. With
    several processes, ``blocks`` are this process's own and the array holds every process's
    blocks one process after another."""
    if mesh is None:
        return jax.device_put(blocks)
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    if _several_processes(mesh):
        return jax.make_array_from_process_local_data(sharding, blocks)
    return jax.make_array_from_callback(blocks.shape, sharding, lambda index: blocks[index])


def split_rows(tree, mesh: Mesh):
    """Every array of ``tree`` (``None`` leaves kept) split by rows (its leading axis, a multiple
    of this process's devices in the mesh) over the devices of ``mesh``: each device holds only
    its share; with several processes each gives its own rows."""
    if _several_processes(mesh):
        return jax.tree.map(lambda a: put_blocks(np.asarray(a), mesh), tree)
    return jax.device_put(tree, NamedSharding(mesh, P(DATA_AXIS)))


def replicate(tree, mesh: Mesh):
    """Every array of ``tree`` (``None`` leaves kept) as a copy on each device of ``mesh``
    (with several processes, each gives the same value)."""
    if not _several_processes(mesh):
        return jax.device_put(tree, NamedSharding(mesh, P()))
    sharding = NamedSharding(mesh, P())

    def place(leaf):
        if jax.dtypes.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key):
            data = jax.make_array_from_process_local_data(sharding, np.asarray(jax.random.key_data(leaf)))
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
        return jax.make_array_from_process_local_data(sharding, np.asarray(leaf))

    return jax.tree.map(place, tree)


def pool_processes(mesh: Mesh | None, fingerprints: dict, init_params, n_rows: int) -> tuple:
    """Start a fit across processes: check that every process has the same ``fingerprints``
    (name -> hex digest: model, settings, restart keys), take process 0's ``init_params``, and
    count the rows. Every process calls it with its own values; all fail together when they
    differ. Returns ``(init_params, largest share of rows, total rows)``; with one process,
    ``init_params`` and ``n_rows`` as given."""
    if not _several_processes(mesh):
        return init_params, n_rows, n_rows
    from jax.experimental import multihost_utils

    names = sorted(fingerprints)
    mine = np.array([int(fingerprints[name][:8], 16) for name in names] + [n_rows], np.int64)
    every = np.asarray(multihost_utils.process_allgather(mine))
    differ = [name for i, name in enumerate(names) if np.any(every[:, i] != every[0, i])]
    if differ:
        raise ValueError(f"the {every.shape[0]} processes of this fit disagree on its "
                         f"{', '.join(differ)}: every process must make the same call (same model, "
                         "settings and key), each with its own rows")
    rows = every[:, -1]
    if init_params is not None:
        init_params = multihost_utils.broadcast_one_to_all(init_params)
    return init_params, int(rows.max()), int(rows.sum())


def every_process(values) -> np.ndarray:
    """``[n_processes, n]``: each process's ``values [n]`` (int32), gathered in every process (a
    collective: all processes call it together); ``values[None]`` with one process."""
    values = np.asarray(values, np.int32).reshape(-1)
    if jax.process_count() == 1:
        return values[None]
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(values)).reshape(jax.process_count(), -1)


def over_processes(value: float, mesh: Mesh | None) -> np.ndarray:
    """Every process's ``value`` (``[n_processes]``; ``[value]`` with one process)."""
    if not _several_processes(mesh):
        return np.array([value])
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(np.array([value], np.float64))).ravel()
