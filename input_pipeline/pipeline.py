"""The Grain pipeline: deterministic, process-sharded, checkpointable batches from a source.

`make_dataset` chains
  MapDataset.source(GuardedSource(source, preprocess)) -> seed(seed) -> shuffle() -> repeat(num_epochs)
  -> this process's rows of each global batch -> batch(batch_size) -> to_iter_dataset
  (-> mp_prefetch(worker_count) when worker_count > 0),
so each process reads a disjoint 1/process_count of every epoch's permutation (its contiguous block of
each global batch, so the global batches do not depend on the number of processes; unbatched
pipelines take every process_count-th element) and the order depends only on `seed`.

Reading and preprocessing one record runs under the corrupt-record policy `on_error` (the vocabulary
of `input_pipeline.sources`): "raise" stops with a one-line DataError naming the record; "skip"
replaces it by the next good record (index + 1, + 2, ...), so the order stays deterministic and
resumable, and counts it (`skipped_count()`, logged).

`mixture` mixes such datasets with `grain.IterDataset.mix`, which keeps one
checkpoint state per component. Iterators from either are checkpointable: `it.get_state()` is a
small JSON-able dict; `it.set_state(state)` on a fresh iterator of the same pipeline resumes with the
identical next batch. With Orbax, save it as `grain.checkpoint.CheckpointSave(it)` (see
`jaxmodels.checkpoint.Checkpointer`), which writes one state file per process.

  >>> from input_pipeline import pipeline, sources, tokenizers
  >>> src = sources.make_source({"type": "webdataset", "shards": "/data/cc/{000..009}.tar"})
  >>> def prep(ex):  # must be picklable (top-level function / functools.partial) for workers
  ...   return {"image": resize(ex["image"]), "tokens": pad(tok.encode(ex["caption"]))}
  >>> und = pipeline.make_dataset(src, seed=0, batch_size=32, preprocess=prep)
  >>> ds = pipeline.mixture({"und": und, "gen": gen, "edit": edit},
  ...                       {"und": 0.5, "gen": 0.4, "edit": 0.1})
  >>> it = iter(ds); batch = next(it); state = it.get_state()
"""
from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from input_pipeline.sources import ON_ERROR_POLICIES, DataError
from jaxmodels.errors import ConfigError

_log = logging.getLogger(__name__)
_policy = {"on_error": "raise"}        # the default of make_dataset(on_error=None)
_skipped = {"count": 0}                # corrupt records skipped in this process (all pipelines)
_skipped_lock = threading.Lock()


@contextlib.contextmanager
def corrupt_record_policy(on_error: str) -> Iterator[None]:
  """Sets the `on_error` policy of the pipelines built inside the block (`make_dataset(on_error=None)`),
  for callers that build them through code that does not pass it, e.g. train.py around
  `make_train_data` with `config.data.on_error`."""
  _check_policy(on_error)
  previous, _policy["on_error"] = _policy["on_error"], on_error
  try:
    yield
  finally:
    _policy["on_error"] = previous


def skipped_count() -> int:
  """Corrupt records skipped so far by this process's pipelines (worker processes count their own)."""
  return _skipped["count"]


def _check_policy(on_error: str) -> None:
  if on_error not in ON_ERROR_POLICIES:
    raise ConfigError(f"on_error={on_error!r} (config.data.on_error): expected one of {ON_ERROR_POLICIES}")


class GuardedSource:
  """A random-access source whose records are read and preprocessed under a corrupt-record policy.

  Any exception from `source[i]` or `preprocess` (a truncated PNG, a bad JSON field, a record that
  does not parse) is, for "raise", a one-line DataError naming the record; for "skip", the record is
  replaced by the next good one (i + 1, i + 2, ... wrapping around), counted in `num_skipped` and in
  `skipped_count()`, and logged. Picklable when `source` and `preprocess` are (Grain workers).

  Example:
    >>> src = GuardedSource(raw_source, decode_and_resize, on_error="skip")
    >>> example = src[17]; src.num_skipped
  """

  def __init__(self, source, preprocess: Callable[[Any], Any] | None = None, on_error: str = "raise"):
    _check_policy(on_error)
    self.source, self.preprocess, self.on_error = source, preprocess, on_error
    self.num_skipped = 0

  def __len__(self) -> int:
    return len(self.source)

  def _read(self, i: int):
    example = self.source[i]
    return self.preprocess(example) if self.preprocess is not None else example

  def __getitem__(self, index):
    n = len(self)
    i = int(index) % n
    try:
      return self._read(i)
    except (IndexError, KeyboardInterrupt):
      raise
    except Exception as e:  # pylint: disable=broad-except
      if self.on_error == "raise":
        raise DataError(f"{self._name()}: record {i} is corrupt ({type(e).__name__}: {_short(e)}); "
                        "set config.data.on_error='skip' to skip such records") from e
      self._note_skip(i, e)
    for step in range(1, n):
      j = (i + step) % n
      try:
        return self._read(j)
      except Exception as e:  # pylint: disable=broad-except
        self._note_skip(j, e)
    raise DataError(f"{self._name()}: all {n} records are corrupt (on_error='skip')")

  def _name(self) -> str:
    return type(self.source).__name__

  def _note_skip(self, i: int, err: Exception) -> None:
    with _skipped_lock:
      self.num_skipped += 1
      _skipped["count"] += 1
      total = _skipped["count"]
    _log.warning("skipping corrupt record %d of %s (%d skipped so far): %s: %s", i, self._name(), total,
                 type(err).__name__, _short(err))


def _short(err: Exception) -> str:
  text = " ".join(str(err).split())
  return text if len(text) < 200 else text[:197] + "..."


def stack_batch(examples: Sequence[Any]) -> Any:
  """Stacks a list of examples (nested dicts/lists/tuples of arrays, scalars, str, bytes) leafwise.

  Raises:
    DataError: naming the field whose shapes differ (resize/pad it in `preprocess`).

  Example:
    >>> stack_batch([{"x": np.zeros(2)}, {"x": np.ones(2)}])["x"].shape
    (2, 2)
  """
  return _stack(list(examples), "")


def _stack(items: list, path: str):
  first = items[0]
  if isinstance(first, Mapping):
    keys = list(first)
    for it in items[1:]:
      if not isinstance(it, Mapping) or list(it) != keys:
        raise DataError(f"cannot batch field {path or '<root>'}: examples have different keys")
    return {k: _stack([it[k] for it in items], f"{path}.{k}" if path else str(k)) for k in keys}
  if isinstance(first, (list, tuple)) and not isinstance(first, (str, bytes)):
    if any(len(it) != len(first) for it in items):
      raise DataError(f"cannot batch field {path}: lists of different lengths")
    return type(first)(_stack([it[i] for it in items], f"{path}[{i}]") for i in range(len(first)))
  try:
    return np.stack([np.asarray(it) for it in items])
  except ValueError as e:
    shapes = sorted({str(np.shape(it)) for it in items})
    raise DataError(f"cannot batch field {path!r}: shapes {', '.join(shapes[:4])} differ; "
                    "make them equal in preprocess") from e


def _process_defaults(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ConfigError(f"process_index={process_index}, process_count={process_count}: "
                      "need 0 <= process_index < process_count")
  return int(process_index), int(process_count)


class _ProcessBlocks:
  """Process `index`'s rows of every global batch: with `local` rows per process and
  G = local * count rows per global batch, local element j is element (j // local) * G +
  index * local + j % local of the (shuffled, repeated) stream. The global batch assembled from all
  processes (`jax.make_array_from_process_local_data`, process order) is then exactly the batch one
  process would read alone, whatever the number of processes. For a finite stream the last partial
  global batch is dropped (`drop_remainder`) or split in process order."""

  def __init__(self, ds, index: int, count: int, local: int, drop_remainder: bool):
    self.ds, self.index, self.local, self.global_ = ds, index, local, local * count
    n = len(ds)
    full, tail = divmod(n, self.global_)
    extra = 0 if drop_remainder else min(max(tail - index * local, 0), local)
    self._len = full * local + extra

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, j):
    k, r = divmod(int(j), self.local)
    return self.ds[k * self.global_ + self.index * self.local + r]


def make_dataset(source, *, seed: int, batch_size: int | None,
                 preprocess: Callable[[dict], dict] | None = None, shuffle: bool = True,
                 num_epochs: int | None = None, process_index: int | None = None,
                 process_count: int | None = None, drop_remainder: bool = True,
                 worker_count: int = 0, worker_buffer_size: int = 1, read_threads: int = 2,
                 prefetch: int = 4, batch_fn: Callable[[Sequence[Any]], Any] | None = None,
                 on_error: str | None = None):
  """Builds the per-process Grain pipeline over a random-access source.

  Args:
    source: a random-access source (`__len__`, `__getitem__`), e.g. from `sources.make_source`.
    seed: the shuffle seed; the same seed gives the same order on every run.
    batch_size: examples per batch *per process*; None returns unbatched examples (for `mixture`
      followed by one batching, so a batch mixes tasks).
    preprocess: example -> example (decode, resize, tokenise, pad). Must be picklable when
      `worker_count > 0`.
    shuffle: shuffle each epoch (reshuffled per epoch) before sharding.
    num_epochs: epochs to read (None: forever).
    process_index: this process (default `jax.process_index()`).
    process_count: the number of processes (default `jax.process_count()`).
    drop_remainder: drop the last partial batch (only matters when `num_epochs` is finite).
    worker_count: > 0 runs the pipeline in that many worker processes (`mp_prefetch`).
    worker_buffer_size: batches each worker buffers.
    read_threads: threads reading/preprocessing elements ahead (0 reads in the caller's thread).
    prefetch: elements (batches) the read threads keep ready.
    batch_fn: how to combine examples (default `stack_batch`, whose errors name the field).
    on_error: corrupt-record policy for reading + preprocessing a record, "raise" or "skip"
      (see `GuardedSource`); None: the one set by `corrupt_record_policy` (default "raise").

  Returns:
    A `grain.IterDataset`; `iter(ds)` gives a checkpointable iterator.

  Raises:
    ConfigError: for a non-positive batch size, an inconsistent process index/count or an unknown
      `on_error`.
    DataError: for an empty source.

  Example:
    >>> ds = make_dataset(src, seed=0, batch_size=8, preprocess=prep, process_index=0,
    ...                   process_count=1)
    >>> it = iter(ds); first = next(it); state = it.get_state()
  """
  import grain  # pylint: disable=g-import-not-at-top

  if batch_size is not None and batch_size < 1:
    raise ConfigError(f"batch_size={batch_size}: must be a positive number of examples per process")
  if num_epochs is not None and num_epochs < 1:
    raise ConfigError(f"num_epochs={num_epochs}: must be positive or None (forever)")
  process_index, process_count = _process_defaults(process_index, process_count)
  if len(source) == 0:
    raise DataError(f"{type(source).__name__}: the source has no records")
  on_error = _policy["on_error"] if on_error is None else on_error
  # Reading and preprocessing happen together under the policy; a deterministic `preprocess` gives
  # the same elements as mapping it after the shuffle.
  ds = grain.MapDataset.source(GuardedSource(source, preprocess, on_error)).seed(int(seed))
  if shuffle:
    ds = ds.shuffle()
  ds = ds.repeat(num_epochs)
  if process_count > 1 and batch_size is not None:
    ds = grain.MapDataset.source(_ProcessBlocks(ds, process_index, process_count, batch_size,
                                                drop_remainder))
  elif process_count > 1:
    ds = ds[process_index::process_count]
  if batch_size is not None:
    ds = ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn or stack_batch)
  if read_threads > 0:
    options = grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=max(1, prefetch))
  else:
    options = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)
  it_ds = ds.to_iter_dataset(options)
  if worker_count > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags (train.py parses them itself)
      flags.FLAGS.mark_as_parsed()
    # Arrays below 4 MB travel pickled through the worker's queue, not as shared-memory segments:
    # cheaper at that size, and a batch still held at exit leaves no segment behind (Python's
    # resource tracker warns about each).
    it_ds = grain.experimental.WithOptionsIterDataset(
        it_ds, grain.experimental.DatasetOptions(min_shm_size=4 << 20))
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=worker_count, per_worker_buffer_size=worker_buffer_size))
  return it_ds


def close(iterator) -> None:
  """Stops an iterator's worker processes / read threads and frees the batches they hold in shared
  memory (with `worker_count > 0` an unclosed iterator leaves them for Python's resource tracker to
  warn about at exit). Safe on any iterator, and to call twice."""
  closer = getattr(iterator, "close", None)
  if callable(closer):
    closer()


def mixture(datasets: Sequence[Any] | Mapping[str, Any],
            weights: Sequence[float] | Mapping[str, float] | None = None, *,
            batch_size: int | None = None, drop_remainder: bool = True,
            batch_fn: Callable[[Sequence[Any]], Any] | None = None):
  """Mixes `grain.IterDataset`s with `grain.IterDataset.mix`; each keeps its own checkpoint state.

  Each draw picks component i with probability weights[i] (normalised). Give infinite components
  (`num_epochs=None`); the mixture stops when a component runs out. Mixing batched components
  yields whole batches of one task; mixing unbatched ones (`make_dataset(..., batch_size=None)`)
  and passing `batch_size` here yields batches that mix tasks (their examples must then have the
  same structure and shapes).

  Args:
    datasets: the components, as a list or a dict name -> dataset.
    weights: matching list or dict of non-negative weights (default: equal).
    batch_size: batch the mixed stream (None: leave as is).
    drop_remainder: with `batch_size`, drop a final partial batch.
    batch_fn: with `batch_size`, how to combine examples (default `stack_batch`).

  Returns:
    The mixed `grain.IterDataset`.

  Raises:
    ConfigError: when names or lengths of datasets and weights disagree, or weights are invalid.

  Example:
    >>> mix = mixture({"und": und_ds, "gen": gen_ds}, {"und": 0.7, "gen": 0.3})
    >>> it = iter(mix); state = it.get_state()   # {"parents": [...], "index": ..., ...}
  """
  import grain  # pylint: disable=g-import-not-at-top

  if isinstance(datasets, Mapping):
    names = list(datasets)
    if weights is None:
      weights = {n: 1.0 for n in names}
    if not isinstance(weights, Mapping) or set(weights) != set(names):
      got = sorted(weights) if isinstance(weights, Mapping) else type(weights).__name__
      raise ConfigError(f"mixture weights {got} must name exactly the datasets {sorted(names)}")
    components = [datasets[n] for n in names]
    w = [weights[n] for n in names]
  else:
    components = list(datasets)
    w = [1.0] * len(components) if weights is None else list(weights)
    names = [str(i) for i in range(len(components))]
    if len(w) != len(components):
      raise ConfigError(f"mixture: {len(w)} weights for {len(components)} datasets")
  if not components:
    raise ConfigError("mixture: no datasets given")
  for name, value in zip(names, w):
    if not np.isfinite(value) or value < 0:
      raise ConfigError(f"mixture weight for {name!r} is {value}: must be finite and >= 0")
  total = float(sum(w))
  if total <= 0:
    raise ConfigError("mixture weights sum to 0")
  mixed = grain.IterDataset.mix(components, [float(v) / total for v in w])
  if batch_size is not None:
    if batch_size < 1:
      raise ConfigError(f"batch_size={batch_size}: must be positive")
    mixed = mixed.batch(batch_size, drop_remainder=drop_remainder, batch_fn=batch_fn or stack_batch)
  return mixed


def pad_tokens(ids: Sequence[int], length: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads (or truncates) token ids to `length`; returns (tokens int32, mask bool).

  Example:
    >>> pad_tokens([5, 6], 4, 0)
    (array([5, 6, 0, 0], dtype=int32), array([ True,  True, False, False]))
  """
  ids = list(ids)[:length]
  tokens = np.full((length,), pad_id, np.int32)
  tokens[: len(ids)] = ids
  mask = np.zeros((length,), bool)
  mask[: len(ids)] = True
  return tokens, mask
