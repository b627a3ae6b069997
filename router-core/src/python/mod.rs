//! `bisllm._core`: thin pyo3 bindings over [`crate::router::Router`].
//!
//! Everything here converts arguments, releases the GIL around the hot calls
//! (`route`, `apply_events`, `hash_blocks`) and maps [`CoreError`] variants to the
//! exception classes declared in `python/bisllm/_core.pyi`. No routing logic lives here.
//!
//! Token ids are accepted as a buffer of native-endian uint32 (`array('I')`, numpy
//! `uint32`, bytes-like objects whose length is a multiple of 4), copied with one
//! memcpy, or as any sequence of ints (converted one by one: the slow path).

use std::ffi::CStr;
use std::time::Duration;

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyDict, PyTuple, PyType};

use crate::dispatch::POLICIES;
use crate::hashing;
use crate::protocols::{BlockHash, CoreError, WorkerKey};
use crate::router::{RouteOptions, Router, RouterConfig};

// ---------------------------------------------------------------------------------
// Exceptions. `UnknownWorkerError(CoreError, KeyError)` has two bases, which
// `create_exception!` cannot express, so every class is built by calling `type()`.
// ---------------------------------------------------------------------------------

static CORE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static EVENT_DECODE_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static UNKNOWN_WORKER_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static UNKNOWN_REQUEST_ERROR: PyOnceLock<Py<PyType>> = PyOnceLock::new();

fn new_exception<'py>(
    py: Python<'py>,
    name: &str,
    doc: &str,
    bases: Vec<Bound<'py, PyType>>,
) -> PyResult<Py<PyType>> {
    let ns = PyDict::new(py);
    ns.set_item("__module__", "bisllm._core")?;
    ns.set_item("__doc__", doc)?;
    // KeyError.__str__ reprs its message (adds quotes); keep plain messages.
    let base_exc = py.get_type::<pyo3::exceptions::PyBaseException>();
    ns.set_item("__str__", base_exc.getattr("__str__")?)?;
    let ty = py
        .get_type::<PyType>()
        .call1((name, PyTuple::new(py, bases)?, ns))?;
    Ok(ty.cast_into::<PyType>()?.unbind())
}

fn core_error(py: Python<'_>) -> &Bound<'_, PyType> {
    CORE_ERROR
        .get_or_init(py, || {
            new_exception(
                py,
                "CoreError",
                "Base class of every error the core raises.",
                vec![py.get_type::<PyValueError>()],
            )
            .expect("creating CoreError")
        })
        .bind(py)
}

fn sub_error<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyType>>,
    name: &str,
    doc: &str,
    key_error: bool,
) -> &'py Bound<'py, PyType> {
    cell.get_or_init(py, || {
        let mut bases = vec![core_error(py).clone()];
        if key_error {
            bases.push(py.get_type::<PyKeyError>());
        }
        new_exception(py, name, doc, bases).expect("creating an exception class")
    })
    .bind(py)
}

fn event_decode_error(py: Python<'_>) -> &Bound<'_, PyType> {
    sub_error(
        py,
        &EVENT_DECODE_ERROR,
        "EventDecodeError",
        "A KV event payload is not a valid vLLM msgpack batch; the index is unchanged.",
        false,
    )
}

fn unknown_worker_error(py: Python<'_>) -> &Bound<'_, PyType> {
    sub_error(
        py,
        &UNKNOWN_WORKER_ERROR,
        "UnknownWorkerError",
        "The worker (id, dp_rank) was never added or was removed.",
        true,
    )
}

fn unknown_request_error(py: Python<'_>) -> &Bound<'_, PyType> {
    sub_error(
        py,
        &UNKNOWN_REQUEST_ERROR,
        "UnknownRequestError",
        "The request id is not booked on the scoreboard (never routed, or already freed).",
        true,
    )
}

fn to_py_err(py: Python<'_>, e: CoreError) -> PyErr {
    let ty = match e {
        CoreError::EventDecode { .. } => event_decode_error(py),
        CoreError::UnknownWorker(_) => unknown_worker_error(py),
        CoreError::UnknownRequest(_) => unknown_request_error(py),
        _ => core_error(py),
    };
    PyErr::from_type(ty.clone(), e.to_string())
}

trait IntoPyResult<T> {
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for Result<T, CoreError> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_py_err(py, e))
    }
}

// ---------------------------------------------------------------------------------
// Argument conversion.
// ---------------------------------------------------------------------------------

/// struct-module codes of a native-endian 4-byte unsigned int (the size is checked apart).
fn is_native_u32_format(f: &CStr) -> bool {
    match f.to_bytes() {
        b"I" | b"@I" | b"=I" | b"L" | b"@L" | b"=L" => true,
        b"<I" | b"<L" => cfg!(target_endian = "little"),
        b">I" | b">L" | b"!I" | b"!L" => cfg!(target_endian = "big"),
        _ => false,
    }
}

fn is_byte_format(f: &CStr) -> bool {
    matches!(f.to_bytes(), b"B" | b"@B" | b"=B" | b"b" | b"c")
}

/// Token ids from a uint32 buffer (one memcpy) or a sequence of ints (per-item).
fn extract_tokens(py: Python<'_>, obj: &Bound<'_, PyAny>) -> PyResult<Vec<u32>> {
    if let Ok(buf) = PyUntypedBuffer::get(obj) {
        let fmt = buf.format();
        let u32s = buf.item_size() == 4 && is_native_u32_format(fmt);
        let bytes = buf.item_size() == 1 && is_byte_format(fmt);
        if (u32s || bytes) && buf.dimensions() <= 1 && buf.is_c_contiguous() {
            let n = buf.len_bytes();
            if n % 4 != 0 {
                return Err(PyValueError::new_err(format!(
                    "a bytes-like token buffer needs a length that is a multiple of 4, got {n}"
                )));
            }
            let mut out = vec![0u32; n / 4];
            // SAFETY: the buffer is C-contiguous with `n` readable bytes and stays
            // exported (so alive and unresized) while `buf` is held; the destination is
            // a fresh u32 vector of exactly `n` bytes, and every bit pattern is a valid u32.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    buf.buf_ptr().cast::<u8>(),
                    out.as_mut_ptr().cast::<u8>(),
                    n,
                );
            }
            return Ok(out);
        }
        // Another element type (numpy int64, a strided view...): per-item conversion below.
    }
    if obj.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyTypeError::new_err(
            "tokens must be ints or a uint32 buffer, not str",
        ));
    }
    obj.extract::<Vec<u32>>().map_err(|e| {
        if e.is_instance_of::<PyTypeError>(py) {
            let ty = obj
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_else(|_| "?".into());
            PyTypeError::new_err(format!(
                "tokens must be a sequence of ints or a uint32 buffer, got {ty}"
            ))
        } else {
            e
        }
    })
}

/// Payload bytes: borrowed for `bytes` (immutable), copied for other buffers.
enum Payload<'py> {
    Bytes(Bound<'py, PyBytes>),
    Owned(Vec<u8>),
}

fn extract_payload<'py>(py: Python<'py>, obj: &Bound<'py, PyAny>) -> PyResult<Payload<'py>> {
    if let Ok(b) = obj.cast::<PyBytes>() {
        return Ok(Payload::Bytes(b.clone()));
    }
    let buf = PyUntypedBuffer::get(obj)
        .map_err(|_| PyTypeError::new_err("payload must be bytes or a bytes-like buffer"))?;
    let mut out = vec![0u8; buf.len_bytes()];
    if buf.item_size() == 1 && buf.dimensions() <= 1 {
        buf.as_typed::<u8>()?.copy_to_slice(py, &mut out)?;
        Ok(Payload::Owned(out))
    } else {
        Err(PyTypeError::new_err(
            "payload buffer must be a flat buffer of bytes",
        ))
    }
}

// ---------------------------------------------------------------------------------
// Result classes.
// ---------------------------------------------------------------------------------

/// What ``Core.route`` chose and why.
#[pyclass(module = "bisllm._core", name = "RouteDecision", frozen)]
pub struct PyRouteDecision {
    #[pyo3(get)]
    worker_id: u64,
    #[pyo3(get)]
    dp_rank: u32,
    /// Blocks of this prompt the chosen worker already holds (router's index).
    #[pyo3(get)]
    overlap_blocks: u32,
    /// The largest overlap any eligible worker had (the best-prefix bound).
    #[pyo3(get)]
    best_overlap_blocks: u32,
    /// Full blocks in the prompt.
    #[pyo3(get)]
    prompt_blocks: u32,
    #[pyo3(get)]
    prompt_tokens: u64,
    /// Uncached prompt tokens booked as prefill load on the worker.
    #[pyo3(get)]
    prefill_tokens: u64,
    /// kv_aware cost of the chosen worker (0.0 for other policies).
    #[pyo3(get)]
    cost: f64,
    #[pyo3(get)]
    prefill_blocks: f64,
    #[pyo3(get)]
    decode_blocks: f64,
    /// Name of the policy that decided.
    #[pyo3(get)]
    policy: &'static str,
}

#[pymethods]
impl PyRouteDecision {
    fn __repr__(&self) -> String {
        format!(
            "RouteDecision(worker=({}, {}), overlap_blocks={}, best_overlap_blocks={}, \
             prompt_blocks={}, prompt_tokens={}, prefill_tokens={}, cost={:.3}, policy={:?})",
            self.worker_id,
            self.dp_rank,
            self.overlap_blocks,
            self.best_overlap_blocks,
            self.prompt_blocks,
            self.prompt_tokens,
            self.prefill_tokens,
            self.cost,
            self.policy
        )
    }
}

/// One worker's scoreboard row.
#[pyclass(module = "bisllm._core", name = "WorkerLoad", frozen)]
pub struct PyWorkerLoad {
    #[pyo3(get)]
    worker_id: u64,
    #[pyo3(get)]
    dp_rank: u32,
    /// Uncached prompt tokens of requests still in prefill.
    #[pyo3(get)]
    prefill_tokens: u64,
    /// Prompt + generated tokens of requests decoding.
    #[pyo3(get)]
    decode_tokens: u64,
    /// prefill_tokens + decode_tokens: the autoscaling signal.
    #[pyo3(get)]
    in_flight_tokens: u64,
    #[pyo3(get)]
    prefill_requests: u32,
    #[pyo3(get)]
    decode_requests: u32,
    /// KV blocks held by active requests (prefill + decode).
    #[pyo3(get)]
    active_blocks: u64,
    /// (block, worker) entries in the prefix index for this worker.
    #[pyo3(get)]
    indexed_blocks: usize,
    /// True while the worker's index entries are predicted from routing, not events.
    #[pyo3(get)]
    approximate: bool,
}

#[pymethods]
impl PyWorkerLoad {
    fn __repr__(&self) -> String {
        format!(
            "WorkerLoad(worker=({}, {}), in_flight_tokens={}, prefill_tokens={}, decode_tokens={}, \
             prefill_requests={}, decode_requests={}, active_blocks={}, indexed_blocks={}, approximate={})",
            self.worker_id,
            self.dp_rank,
            self.in_flight_tokens,
            self.prefill_tokens,
            self.decode_tokens,
            self.prefill_requests,
            self.decode_requests,
            self.active_blocks,
            self.indexed_blocks,
            if self.approximate { "True" } else { "False" }
        )
    }
}

/// What one ``apply_events`` call did.
#[pyclass(module = "bisllm._core", name = "EventsSummary", frozen)]
pub struct PyEventsSummary {
    #[pyo3(get)]
    dp_rank: u32,
    #[pyo3(get)]
    stored_blocks: usize,
    #[pyo3(get)]
    removed_blocks: usize,
    #[pyo3(get)]
    cleared: bool,
    /// Stored blocks whose parent was unknown (chain broken; not indexed).
    #[pyo3(get)]
    orphaned_blocks: usize,
}

#[pymethods]
impl PyEventsSummary {
    fn __repr__(&self) -> String {
        format!(
            "EventsSummary(dp_rank={}, stored_blocks={}, removed_blocks={}, cleared={}, orphaned_blocks={})",
            self.dp_rank,
            self.stored_blocks,
            self.removed_blocks,
            if self.cleared { "True" } else { "False" },
            self.orphaned_blocks
        )
    }
}

// ---------------------------------------------------------------------------------
// Core.
// ---------------------------------------------------------------------------------

/// Prefix index + scoreboard + dispatch for one model served by a pool of workers.
///
/// Args:
///     block_size: tokens per KV block; every worker of this core must use it.
///     policy: one of ``POLICIES``.
///     overlap_weight: kv_aware weight of prefill blocks against decode blocks.
///     temperature: kv_aware softmax temperature; 0 takes the minimum cost.
///     seed: RNG seed for random, power_of_two and temperature sampling.
///     approx_ttl_secs: lifetime of entries predicted for approximate workers.
#[pyclass(module = "bisllm._core", name = "Core", frozen)]
pub struct PyCore {
    router: Router,
}

#[pymethods]
impl PyCore {
    #[new]
    #[pyo3(signature = (block_size, *, policy = "kv_aware", overlap_weight = 1.0, temperature = 0.0, seed = None, approx_ttl_secs = 120.0))]
    fn new(
        py: Python<'_>,
        block_size: usize,
        policy: &str,
        overlap_weight: f64,
        temperature: f64,
        seed: Option<u64>,
        approx_ttl_secs: f64,
    ) -> PyResult<Self> {
        if !(approx_ttl_secs > 0.0 && approx_ttl_secs <= crate::router::MAX_TTL.as_secs_f64()) {
            return Err(to_py_err(
                py,
                CoreError::InvalidArgument(format!(
                    "approx_ttl_secs must be in (0, {}], got {approx_ttl_secs}",
                    crate::router::MAX_TTL.as_secs()
                )),
            ));
        }
        let cfg = RouterConfig {
            block_size,
            policy: policy.to_string(),
            overlap_weight,
            temperature,
            seed,
            approx_ttl: Duration::from_secs_f64(approx_ttl_secs),
        };
        Ok(PyCore {
            router: Router::new(&cfg).py(py)?,
        })
    }

    #[getter]
    fn block_size(&self) -> usize {
        self.router.block_size()
    }

    #[getter]
    fn policy(&self) -> &'static str {
        self.router.policy_name()
    }

    /// Register a worker (idempotent). Approximate workers get predicted index entries.
    #[pyo3(signature = (worker_id, dp_rank = 0, *, approximate = false))]
    fn add_worker(&self, worker_id: u64, dp_rank: u32, approximate: bool) {
        self.router
            .add_worker(WorkerKey::new(worker_id, dp_rank), approximate);
    }

    /// Drop a worker (all dp ranks when None): its index entries, and stop routing to it.
    ///
    /// Requests already booked on it stay on the scoreboard until finished or cancelled.
    /// Raises UnknownWorkerError if no such worker.
    #[pyo3(signature = (worker_id, dp_rank = None))]
    fn remove_worker(&self, py: Python<'_>, worker_id: u64, dp_rank: Option<u32>) -> PyResult<()> {
        self.router.remove_worker(worker_id, dp_rank).py(py)
    }

    /// Switch a worker between event-driven (exact) and predicted (approximate) entries.
    ///
    /// Switching clears the worker's index entries: the two sources never mix.
    #[pyo3(signature = (worker_id, approximate, dp_rank = None))]
    fn set_approximate(
        &self,
        py: Python<'_>,
        worker_id: u64,
        approximate: bool,
        dp_rank: Option<u32>,
    ) -> PyResult<()> {
        self.router
            .set_approximate(worker_id, approximate, dp_rank)
            .py(py)
    }

    /// Registered (worker_id, dp_rank) keys, sorted.
    fn workers(&self) -> Vec<(u64, u32)> {
        self.router
            .workers()
            .into_iter()
            .map(|k| (k.worker_id, k.dp_rank))
            .collect()
    }

    /// Decode one raw vLLM KV event batch (msgpack ``[ts, [events], dp_rank]``) and apply it.
    ///
    /// Raises EventDecodeError (index unchanged) on a malformed payload and
    /// UnknownWorkerError if (worker_id, dp_rank of the batch) is not registered.
    /// Blocks stored under a LoRA adapter are hashed with ``lora_salt(lora_name)``.
    fn apply_events(
        &self,
        py: Python<'_>,
        worker_id: u64,
        payload: &Bound<'_, PyAny>,
    ) -> PyResult<PyEventsSummary> {
        let payload = extract_payload(py, payload)?;
        let router = &self.router;
        let res = match &payload {
            Payload::Bytes(b) => {
                let bytes: &[u8] = b.as_bytes();
                py.detach(|| router.apply_events(worker_id, bytes))
            }
            Payload::Owned(v) => py.detach(|| router.apply_events(worker_id, v)),
        };
        let s = res.py(py)?;
        Ok(PyEventsSummary {
            dp_rank: s.dp_rank,
            stored_blocks: s.stored_blocks,
            removed_blocks: s.removed_blocks,
            cleared: s.cleared,
            orphaned_blocks: s.orphaned_blocks,
        })
    }

    /// Drop every index entry of a worker (all dp ranks when None), keep it routable.
    #[pyo3(signature = (worker_id, dp_rank = None))]
    fn clear_worker(&self, py: Python<'_>, worker_id: u64, dp_rank: Option<u32>) -> PyResult<()> {
        self.router.clear_worker(worker_id, dp_rank).py(py)
    }

    /// Per worker, how many leading blocks of ``block_hashes`` it holds (workers with 0 omitted).
    fn find_matches<'py>(
        &self,
        py: Python<'py>,
        block_hashes: Vec<u64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let hashes: Vec<BlockHash> = block_hashes.into_iter().map(BlockHash).collect();
        let router = &self.router;
        let matches = py.detach(|| router.find_matches(&hashes));
        let d = PyDict::new(py);
        for (k, n) in matches {
            d.set_item((k.worker_id, k.dp_rank), n)?;
        }
        Ok(d)
    }

    /// Hash, match, score, choose and book one request; GIL released.
    ///
    /// ``exclude`` removes workers (e.g. one that just failed) from this choice.
    /// Raises CoreError if no eligible worker, or if request_id is already booked.
    #[pyo3(
        signature = (request_id, tokens, *, salt = 0, exclude = Vec::new(), expected_output_tokens = 0),
        text_signature = "($self, request_id, tokens, *, salt=0, exclude=(), expected_output_tokens=0)"
    )]
    fn route(
        &self,
        py: Python<'_>,
        request_id: &str,
        tokens: &Bound<'_, PyAny>,
        salt: u64,
        exclude: Vec<(u64, u32)>,
        expected_output_tokens: u64,
    ) -> PyResult<PyRouteDecision> {
        let tokens = extract_tokens(py, tokens)?;
        let exclude: Vec<WorkerKey> = exclude
            .into_iter()
            .map(|(w, r)| WorkerKey::new(w, r))
            .collect();
        let router = &self.router;
        let opts = RouteOptions {
            salt,
            exclude: &exclude,
            expected_output_tokens,
        };
        let d = py
            .detach(|| router.route(request_id, &tokens, &opts))
            .py(py)?;
        Ok(PyRouteDecision {
            worker_id: d.worker.worker_id,
            dp_rank: d.worker.dp_rank,
            overlap_blocks: d.overlap_blocks,
            best_overlap_blocks: d.best_overlap_blocks,
            prompt_blocks: d.prompt_blocks,
            prompt_tokens: d.prompt_tokens,
            prefill_tokens: d.prefill_tokens,
            cost: d.cost.cost,
            prefill_blocks: d.cost.prefill_blocks,
            decode_blocks: d.cost.decode_blocks,
            policy: d.policy,
        })
    }

    /// Move a request from prefill to decode.
    ///
    /// The first token itself is not counted: report every generated token (the first
    /// included) with ``on_tokens``.
    fn on_first_token(&self, py: Python<'_>, request_id: &str) -> PyResult<()> {
        self.router.on_first_token(request_id).py(py)
    }

    /// Account ``num_tokens`` newly generated tokens of a decoding request.
    ///
    /// A request still in prefill moves to decode first.
    fn on_tokens(&self, py: Python<'_>, request_id: &str, num_tokens: u64) -> PyResult<()> {
        self.router.on_tokens(request_id, num_tokens).py(py)
    }

    /// Free a request (completed, failed or cancelled).
    fn on_finish(&self, py: Python<'_>, request_id: &str) -> PyResult<()> {
        self.router.on_finish(request_id).py(py)
    }

    /// Scoreboard rows of every registered worker, sorted by key.
    fn loads(&self) -> Vec<PyWorkerLoad> {
        self.router
            .loads()
            .into_iter()
            .map(|r| PyWorkerLoad {
                worker_id: r.key.worker_id,
                dp_rank: r.key.dp_rank,
                prefill_tokens: r.load.prefill_tokens,
                decode_tokens: r.load.decode_tokens,
                in_flight_tokens: r.load.in_flight_tokens(),
                prefill_requests: r.load.prefill_requests,
                decode_requests: r.load.decode_requests,
                active_blocks: r.load.active_blocks,
                indexed_blocks: r.indexed_blocks,
                approximate: r.approximate,
            })
            .collect()
    }

    /// Sum of in-flight tokens over all workers: the autoscaling signal.
    fn in_flight_tokens(&self) -> u64 {
        self.router.in_flight_tokens()
    }

    /// Requests currently booked.
    fn num_requests(&self) -> usize {
        self.router.num_requests()
    }

    /// (block, worker) entries in the prefix index.
    fn index_size(&self) -> usize {
        self.router.index_size()
    }

    /// Drop expired approximate entries now; returns how many. (route also prunes lazily.)
    fn prune_expired(&self) -> usize {
        self.router.prune_expired()
    }

    fn __repr__(&self) -> String {
        format!(
            "Core(block_size={}, policy={:?}, workers={}, index_size={}, requests={})",
            self.router.block_size(),
            self.router.policy_name(),
            self.router.workers().len(),
            self.router.index_size(),
            self.router.num_requests()
        )
    }
}

/// Chained xxh3-64 hashes of every full block of ``tokens``.
///
/// Block i hashes ``le_bytes(h_{i-1}) || le_u32(tokens of block i)`` with seed ``salt``;
/// the trailing partial block is not hashed.
#[pyfunction]
#[pyo3(name = "hash_blocks", signature = (tokens, block_size, salt = 0))]
fn py_hash_blocks(
    py: Python<'_>,
    tokens: &Bound<'_, PyAny>,
    block_size: usize,
    salt: u64,
) -> PyResult<Vec<u64>> {
    if block_size == 0 {
        return Err(to_py_err(
            py,
            CoreError::InvalidArgument("block_size must be positive".into()),
        ));
    }
    let tokens = extract_tokens(py, tokens)?;
    Ok(py.detach(|| {
        hashing::hash_blocks(&tokens, block_size, salt)
            .into_iter()
            .map(|h| h.0)
            .collect()
    }))
}

/// The ``salt`` of requests to a LoRA adapter: ``xxh3_64(lora_name.encode())``.
///
/// ``apply_events`` hashes blocks stored with a ``lora_name`` under this salt, so pass
/// the same value to ``route(..., salt=...)`` for requests to that adapter.
#[pyfunction]
fn lora_salt(lora_name: &str) -> u64 {
    hashing::lora_salt(lora_name)
}

/// The runtime value of the stub's `TokenInput` alias (`Sequence[int] | Buffer`), so
/// `from bisllm._core import TokenInput` works outside type checking too.
fn token_input_alias(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    let ns = PyDict::new(py);
    py.run(
        c"import typing
from collections.abc import Sequence
try:
    from collections.abc import Buffer
except ImportError:  # Python 3.11
    try:
        from typing_extensions import Buffer
    except ImportError:
        Buffer = bytes | bytearray | memoryview
TokenInput = typing.Union[Sequence[int], Buffer]
",
        Some(&ns),
        None,
    )?;
    Ok(ns.get_item("TokenInput")?.expect("defined by the snippet"))
}

/// The compiled router core (Rust): prefix index, scoreboard and dispatch.
#[pymodule]
#[pyo3(name = "_core")]
fn core_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add("POLICIES", PyTuple::new(py, POLICIES)?)?;
    m.add("CoreError", core_error(py))?;
    m.add("EventDecodeError", event_decode_error(py))?;
    m.add("UnknownWorkerError", unknown_worker_error(py))?;
    m.add("UnknownRequestError", unknown_request_error(py))?;
    m.add_class::<PyCore>()?;
    m.add_class::<PyRouteDecision>()?;
    m.add_class::<PyWorkerLoad>()?;
    m.add_class::<PyEventsSummary>()?;
    m.add_function(wrap_pyfunction!(py_hash_blocks, m)?)?;
    m.add_function(wrap_pyfunction!(lora_salt, m)?)?;
    m.add("TokenInput", token_input_alias(py)?)?;
    // The public names, as the stub's `__all__` lists them (TokenInput is a helper alias).
    m.add(
        "__all__",
        vec![
            "Core",
            "CoreError",
            "EventDecodeError",
            "RouteDecision",
            "UnknownRequestError",
            "UnknownWorkerError",
            "WorkerLoad",
            "EventsSummary",
            "hash_blocks",
            "lora_salt",
            "POLICIES",
            "__version__",
        ],
    )?;
    Ok(())
}
