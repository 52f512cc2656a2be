"""Runtime backends: one callable from padded model inputs to start/end logits, whatever runs the model.

A `Runner` hides what executes a QA model: PyTorch in fp32 or bf16, or ONNX Runtime on the graphs that
`tinyroberta-es export` writes (fp32, fused; int8, dynamically quantised). `QuestionAnswerer` batches the
windows and turns logits into answers; the runner only maps `{"input_ids": (B, T) int64, ...}` to two float32
`(B, T)` arrays. Backends are factories in `BACKENDS`; `make_runner` validates the name and builds one.

Measured on this project's CPU (2-core Xeon with AVX-512-BF16 and AMX, shared, so +-15%), a 6x512 RoBERTa
student, one 384-token window, 2 threads, median of 20, each backend in a fresh process: PyTorch fp32 102 ms,
PyTorch bf16 45 ms, ONNX Runtime fp32 (fused) 82 ms, ONNX Runtime int8 (fused) 32 ms. Padding windows to a
multiple of 8 did not help ONNX Runtime (376 to 384 tokens within noise of one another), so no runner pads.
`pytorch-bf16-compiled` (Inductor, compiled at load) is the fastest at batch 1 there: see its factory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from tinyroberta_es.errors import UserError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"  # `export` writes into <model>/onnx/ unless told otherwise
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model.int8.onnx"}
INSTALL_HINT = "pip install 'tinyroberta-es[onnx]'"
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # what `Features.batch` makes

Forward = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]


@dataclass
class Runner:
    """A loaded QA model behind one call: `runner(inputs) -> (start_logits, end_logits)`, float32 (B, T).

    `inputs` holds (B, T) int64 arrays; the runner takes the ones in `input_names` and ignores the rest, so
    callers may pass `token_type_ids` to a model that has none; those in `optional_inputs` may be absent.
    """

    name: str  # the backend, a key of BACKENDS
    dtype: str  # what the matmuls run in: float32, bfloat16, int8
    device: str  # cpu, cuda, cuda:1
    threads: int | None  # intra-op CPU threads; None: the library's default
    input_names: tuple[str, ...]
    forward: Forward = field(repr=False)
    params: int | None = None  # parameters of the model (None when unknown)
    weights_bytes: int | None = None  # size on disk of what the backend loads (in memory: of the tensors)
    pad_to_multiple_of: int | None = None  # pad T up to a multiple of this before calling
    module: Any = field(default=None, repr=False)  # the torch module of the PyTorch backends
    optional_inputs: tuple[str, ...] = ()

    def __call__(self, inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits (B, T) float32 of a padded batch."""
        missing = [n for n in self.input_names if n not in inputs and n not in self.optional_inputs]
        if missing:
            raise ValueError(f"the {self.name} runner needs inputs {missing}; got {sorted(inputs)}")
        return self.forward({name: inputs[name] for name in self.input_names if name in inputs})


# --- PyTorch ------------------------------------------------------------------------------------------------


def torch_runner(
    model: torch.nn.Module,
    device: str | torch.device = "cpu",
    *,
    name: str = "pytorch",
    threads: int | None = None,
    weights_bytes: int | None = None,
) -> Runner:
    """Wrap a torch QA module, moved to `device`, as a Runner (its dtype and train/eval mode are kept).

    The mode is left alone because the training loop evaluates the model it is training.
    """
    import inspect

    import torch

    if threads:
        torch.set_num_threads(threads)  # process-wide: torch has no per-model thread pool
    device = torch.device(device)
    model = model.to(device)
    accepted = inspect.signature(model.forward).parameters
    takes_any = any(p.kind is p.VAR_KEYWORD for p in accepted.values())  # wrappers: forward(*args, **kwargs)
    input_names = tuple(n for n in MODEL_INPUTS if takes_any or n in accepted)
    tensors = [*model.parameters(), *model.buffers()]
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    return Runner(
        name=name,
        dtype=dtype,
        device=str(device),
        threads=threads,
        input_names=input_names,
        forward=torch_forward(model, device),
        params=sum(p.numel() for p in model.parameters()),
        weights_bytes=weights_bytes or sum(t.numel() * t.element_size() for t in tensors),
        module=model,
        optional_inputs=("token_type_ids",),  # RoBERTa accepts them; its tokenizer makes none
    )


def torch_forward(call: Callable[..., Any], device: Any) -> Forward:
    """numpy inputs -> `call` (a QA module, or its compiled form) on `device` -> float32 numpy logits."""
    import torch

    @torch.inference_mode()
    def forward(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        out = call(**{k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in inputs.items()})
        return out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()  # (B, T)

    return forward


def _pytorch(source: str, device: str, threads: int | None) -> Runner:
    from tinyroberta_es.inference import load_qa_module

    return torch_runner(
        load_qa_module(source),
        _torch_device(device),
        threads=threads,
        weights_bytes=_torch_weights_bytes(source),
    )


def _pytorch_bf16(source: str, device: str, threads: int | None) -> Runner:
    """bf16 weights and activations: the weights are cast, on CPU and GPU alike.

    Casting beat autocast on this project's CPU (6x512 student, 1 x 384 tokens, median of 10): 37 ms against
    53 ms on 2 threads, 47 ms against 71 ms on 1 (fp32: 102 and 176 ms). Autocast keeps fp32 weights and
    converts them on every call, which an inference-only model does not need. Logits move by about 1% of
    their range (autocast: 0.4%).
    """
    import torch

    from tinyroberta_es.inference import load_qa_module

    return torch_runner(
        load_qa_module(source).to(torch.bfloat16),
        _torch_device(device),
        name="pytorch-bf16",
        threads=threads,
        weights_bytes=_torch_weights_bytes(source),
    )


def _pytorch_bf16_compiled(source: str, device: str, threads: int | None) -> Runner:
    """The bf16 model compiled by Inductor (`torch.compile`): frozen weights, max-autotune, dynamic shapes.

    On this project's CPU (AMX) the paper student at 1 x 384 tokens took 21.6 ms against 31.5 ms in eager
    bf16 and 31.9 ms in ONNX Runtime int8 (benchmarks/results/speed-paper.md). Compiling happens here, at
    load, and takes tens of seconds: one graph for batch 1 and one for larger batches, each serving every
    sequence length. On CPU Inductor writes C++, so it needs a C++ compiler (g++). Freezing is a process-wide
    Inductor setting: it folds the weights into the graph, which suits inference only.
    """
    import torch
    import torch._inductor.config as inductor
    import torch._inductor.select_algorithm as select_algorithm

    from tinyroberta_es.inference import load_fast_tokenizer, max_tokens, tokenizer_folder

    runner = _pytorch_bf16(source, device, threads)
    inductor.freezing = True
    inductor.max_autotune_report_choices_stats = False  # autotuning otherwise prints tables on stderr
    select_algorithm.PRINT_AUTOTUNE = False
    compiled = torch.compile(runner.module, dynamic=True, mode="max-autotune-no-cudagraphs")
    forward = torch_forward(compiled, torch.device(runner.device))
    # Warm up with the inputs the tokenizer makes (another set of keyword arguments recompiles) at a
    # realistic window length (autotuning picks kernels for the sizes it first sees).
    made = load_fast_tokenizer(tokenizer_folder(source)).model_input_names
    names = [n for n in runner.input_names if n in made]
    length = min(384, max_tokens(runner.module.config) or 384)
    try:
        for batch in (1, 2):  # batch 1 gets its own graph (dynamic shapes specialise sizes 0 and 1)
            ones = np.ones((batch, length), dtype=np.int64)
            forward({n: ones if n == "attention_mask" else 0 * ones for n in names})
    except Exception as err:  # Inductor raises many kinds (no compiler, unsupported op)
        first = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
        raise UserError(
            f"the pytorch-bf16-compiled backend could not compile {source} ({first}); it needs a C++ "
            "compiler (g++) on CPU: install one or use --backend pytorch-bf16"
        ) from None
    return replace(runner, name="pytorch-bf16-compiled", forward=forward)


def _torch_device(device: str) -> str:
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but torch sees no CUDA GPU: run on cpu")
    return device


def _torch_weights_bytes(source: str) -> int | None:
    """Bytes of the weight files `from_pretrained` reads from a local folder (None for a Hub id)."""
    folder = Path(source)
    if not folder.is_dir():
        return None
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    return sum(f.stat().st_size for f in files) or None


# --- ONNX Runtime -------------------------------------------------------------------------------------------


def onnx_path(source: str | Path, backend: str) -> Path:
    """The ONNX file `backend` loads for `source`, whether or not it exists yet.

    `<dir>/onnx/<file>` for a model folder (where `export` writes by default), or `<dir>/<file>` when `source`
    is itself an export folder (`export --output`).
    """
    folder = Path(source).expanduser()
    file = ONNX_FILES[backend]
    if not (folder / ONNX_DIR / file).is_file() and (folder / file).is_file():
        return folder / file
    return folder / ONNX_DIR / file


def _existing_onnx_path(source: str, backend: str) -> Path:
    path = onnx_path(source, backend)
    if not path.is_file():
        quantize = " --quantize int8" if backend == "onnx-int8" else ""
        raise UserError(
            f"no ONNX export at {path}: run tinyroberta-es export --model {source}{quantize} first"
        )
    return path


def import_onnxruntime() -> Any:
    """`onnxruntime`, or a UserError with the install hint."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            f"the onnx backends need onnxruntime, which is not installed: {INSTALL_HINT}"
        ) from None
    return onnxruntime


def onnx_runner(
    path: str | Path, *, name: str, dtype: str, device: str = "cpu", threads: int | None = None
) -> Runner:
    """An ONNX Runtime session on `path` (all graph optimisations on) as a Runner."""
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or 0  # 0: one thread per physical core
    options.log_severity_level = 3  # errors only: ORT warns about every node it keeps on the CPU
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise UserError(
                f"device {device} requested but this onnxruntime has no CUDA provider: "
                "pip install onnxruntime-gpu, or run on cpu"
            )
        index = int(device.partition(":")[2] or 0)
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": index}))
    try:
        session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as err:  # ORT raises its own exception types, one per failure kind
        raise UserError(f"onnxruntime cannot load {path}: {str(err).strip().splitlines()[0]}") from None
    input_names = tuple(i.name for i in session.get_inputs())
    metadata = session.get_modelmeta().custom_metadata_map
    path = Path(path)
    external = sum(f.stat().st_size for f in path.parent.glob(f"{path.name}.data"))

    def forward(inputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        feed = {k: np.ascontiguousarray(v, dtype=np.int64) for k, v in inputs.items()}
        start, end = session.run(["start_logits", "end_logits"], feed)
        return start.astype(np.float32, copy=False), end.astype(np.float32, copy=False)

    return Runner(
        name=name,
        dtype=dtype,
        device=device,
        threads=threads,
        input_names=input_names,
        forward=forward,
        params=int(metadata["params"]) if "params" in metadata else None,
        weights_bytes=path.stat().st_size + external,
        module=None,
    )


def _onnx(source: str, device: str, threads: int | None) -> Runner:
    path = _existing_onnx_path(source, "onnx")
    return onnx_runner(path, name="onnx", dtype="float32", device=device, threads=threads)


def _onnx_int8(source: str, device: str, threads: int | None) -> Runner:
    path = _existing_onnx_path(source, "onnx-int8")
    return onnx_runner(path, name="onnx-int8", dtype="int8", device=device, threads=threads)


BACKENDS: dict[str, Callable[[str, str, int | None], Runner]] = {
    "pytorch": _pytorch,
    "pytorch-bf16": _pytorch_bf16,
    "pytorch-bf16-compiled": _pytorch_bf16_compiled,
    "onnx": _onnx,
    "onnx-int8": _onnx_int8,
}


def check_backend(backend: str) -> None:
    """UserError naming the choices unless `backend` is a key of BACKENDS."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")


def default_device(backend: str) -> str:
    """cuda when the backend's library sees a GPU, else cpu."""
    if backend.startswith("onnx"):
        try:
            import onnxruntime
        except ImportError:
            return "cpu"
        return "cuda" if "CUDAExecutionProvider" in onnxruntime.get_available_providers() else "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def make_runner(
    model_dir: str | Path, backend: str, *, device: str | None = "cpu", threads: int | None = None
) -> Runner:
    """Load the model of `model_dir` (a folder, or a Hub id for the PyTorch backends) with `backend`.

    `device` None picks cuda when the backend can use a GPU. The ONNX backends read the files that
    `tinyroberta-es export` wrote into `<model_dir>/onnx/` (or into `model_dir`, an export folder).
    """
    check_backend(backend)
    if threads is not None and threads < 1:
        raise UserError(f"threads {threads} must be a positive integer")
    device = device or default_device(backend)
    if device.partition(":")[0] not in ("cpu", "cuda"):
        raise UserError(f"device {device!r} is not cpu or cuda[:N]")
    if backend.startswith("onnx") and not Path(model_dir).expanduser().is_dir():
        raise UserError(f"the {backend} backend needs a local model folder; {model_dir} is not one")
    path = Path(model_dir).expanduser()
    runner = BACKENDS[backend](str(path) if path.exists() else str(model_dir), device, threads)
    log.info(
        "backend %s (%s on %s, %s threads): %s parameters, %.1f MB of weights",
        runner.name,
        runner.dtype,
        runner.device,
        runner.threads or "default",
        f"{runner.params:,}" if runner.params else "?",
        (runner.weights_bytes or 0) / 1e6,
    )
    return runner
