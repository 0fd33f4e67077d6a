"""DeepSpeed ZeRO stages 1, 2 and 3 as an ember strategy, for both layers and ``ember launch``.

Spellings: ``strategy="deepspeed"`` (stage 2), ``"deepspeed_stage_1"``, ``"deepspeed_stage_2"``,
``"deepspeed_stage_2_offload"``, ``"deepspeed_stage_3"``, ``"deepspeed_stage_3_offload"``; Lightning's
``DeepSpeedStrategy(stage=..., config=...)``; Accelerate's ``Accelerator(deepspeed_plugin=DeepSpeedPlugin(...))``;
the launch YAML's ``distributed_type: DEEPSPEED`` with a ``deepspeed_config`` section.

The user's loop stays as it is: ``backward`` runs the engine's backward (the loss is scaled for accumulation once,
by ember; DeepSpeed's own division is off), ember tells the engine where each accumulation window ends,
``optimizer.step()`` is the engine's step, ``clip_grad_norm_`` sets this step's clipping and returns the global norm
over every rank's partition. Checkpoints are per-rank ZeRO partitions in safetensors + JSON (see
:mod:`ember.strategies._deepspeed_state`); they load on the same world size.

>>> DeepSpeedStrategy(stage=3, offload_optimizer=True).config["zero_optimization"]
{'stage': 3, 'offload_optimizer': {'device': 'cpu'}}
>>> DeepSpeedPlugin(zero_stage=2, gradient_accumulation_steps=4).to_strategy().config
{'zero_optimization': {'stage': 2}, 'gradient_accumulation_steps': 4}
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import weakref
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ember._errors import EmberConfigError
from ember.precision import Precision
from ember.strategies import _deepspeed_config as dsc
from ember.strategies import _deepspeed_state as dss
from ember.strategies._group import close_at_exit, destroy_process_group, init_process_group
from ember.strategies.base import (
    BackwardSyncControl,
    ForwardRedirection,
    GradientHolder,
    Strategy,
    TrainingSettings,
)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class DeepSpeedPrecision(Precision):
    """The precision under DeepSpeed: the engine itself holds bf16/fp16 weights with fp32 master copies and scales
    fp16 losses; ember only converts floating inputs to the engine's dtype."""

    def __init__(self, name: str) -> None:
        self.name = name
        section = dsc.PRECISION_SECTIONS.get(name)
        self.param_dtype = _DTYPES[section] if section else None

    def convert_input(self, data: Any) -> Any:
        from ember.data import apply_to_tensors

        dtype = self.param_dtype
        return data if dtype is None else apply_to_tensors(data, lambda t: t.to(dtype) if t.is_floating_point() else t)


class DeepSpeedModel(torch.nn.Module):
    """What ``prepare`` returns: the user's module (``.module``) run through its DeepSpeed engine (``.engine``).

    The engine is built when the model's optimizer is prepared (with the model, or later as the Trainer does);
    until then the module runs as it is (evaluation without an optimizer)."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__()
        self.module = module
        self.__dict__["engine"] = None  # not a submodule: the engine holds the same module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        engine = self.__dict__["engine"]
        return engine(*args, **kwargs) if engine is not None else self.module(*args, **kwargs)


@dataclass
class _Run:
    """One model's engine and this step's ember-side adjustments."""

    model: DeepSpeedModel
    engine: Any
    stage: int
    clip: float | None = None  # max_norm from clip_grad_norm_ for the coming step
    factor: float | None = None  # accumulation rescale for the coming step


class DeepSpeedStrategy(Strategy, BackwardSyncControl, ForwardRedirection, TrainingSettings, GradientHolder):
    """ZeRO data parallelism through DeepSpeed (``pip install 'ember[deepspeed]'``).

    Args (Lightning's names; any of them may instead come from ``config``; both at once must agree):
        stage: ZeRO stage 1, 2 or 3 (default 2).
        config: a DeepSpeed config dict or JSON file path; ``"auto"`` values are filled from ember's settings.
        offload_optimizer / offload_parameters: offload optimizer state (stage 2, 3) / parameters (stage 3) to
            ``offload_optimizer_device`` / ``offload_params_device`` (default ``"cpu"``).
        gradient_accumulation_steps / gradient_clipping: Accelerate's plugin fields (see :class:`DeepSpeedPlugin`).
        zero3_init_flag: build models under ``deepspeed.zero.Init`` in :meth:`module_init_context` (stage 3).
        zero3_save_16bit_model: ZeRO-3 checkpoints also hold the gathered ``model.safetensors``.
        allgather_bucket_size / reduce_bucket_size: DeepSpeed's communication bucket sizes (elements); by default
            DeepSpeed's 5e8, or the model's trainable size when that is smaller (a larger bucket only costs memory).
        logging_level: DeepSpeed's logger level (default WARNING).

    >>> DeepSpeedStrategy(stage=1, config={"zero_optimization": {"stage": 2}})
    Traceback (most recent call last):
    ...
    ember._errors.EmberConfigError: DeepSpeedStrategy(stage=...) is 1, but the DeepSpeed config sets \
zero_optimization.stage=2. Make them agree, or set zero_optimization.stage to "auto" in the config so ember fills it in.
    """

    name = "deepspeed"

    def __init__(
        self, stage: int | None = None, config: dict[str, Any] | str | os.PathLike[str] | None = None, *,
        offload_optimizer: bool = False, offload_parameters: bool = False,
        offload_optimizer_device: str | None = None, offload_params_device: str | None = None,
        gradient_accumulation_steps: int | None = None, gradient_clipping: float | None = None,
        zero3_init_flag: bool | None = None, zero3_save_16bit_model: bool | None = None,
        allgather_bucket_size: int | None = None, reduce_bucket_size: int | None = None,
        logging_level: int = logging.WARNING, process_group_backend: str | None = None,
    ) -> None:
        super().__init__()
        if importlib.util.find_spec("deepspeed") is None:
            raise EmberConfigError("strategy='deepspeed' needs DeepSpeed, which is not installed. Install it with "
                                   "pip install --no-build-isolation 'ember[deepspeed]' (after torch).")
        self.draft = dsc.ConfigDraft(dsc.load_user_config(config))
        self.zero3_init_flag = bool(zero3_init_flag)
        self.logging_level, self.backend = logging_level, process_group_backend
        self._set_options(stage, offload_optimizer, offload_parameters, offload_optimizer_device,
                          offload_params_device, gradient_accumulation_steps, gradient_clipping,
                          zero3_save_16bit_model, allgather_bucket_size, reduce_bucket_size)
        self._accumulation, self._precision_name = 1, "32-true"
        self._micro: int | None = None
        self._sync, self._owns_group = True, False
        self._runs: list[_Run] = []
        self._pending: list[weakref.ref[DeepSpeedModel]] = []

    def _set_options(self, stage: int | None, offload_optimizer: bool, offload_parameters: bool,
                     optimizer_device: str | None, params_device: str | None, accumulation: int | None,
                     clipping: float | None, save_16bit: bool | None, allgather: int | None,
                     reduce: int | None, source: str = "DeepSpeedStrategy", stage_name: str = "stage") -> None:
        draft = self.draft
        if stage is not None and stage not in (1, 2, 3):
            raise EmberConfigError(f"{source}({stage_name}={stage!r}): the ZeRO stage must be 1, 2 or 3 (stage 0 is "
                                   "plain data parallelism: use strategy='ddp').")
        draft.put("zero_optimization.stage", stage, f"{source}({stage_name}=...)")
        if offload_optimizer or optimizer_device not in (None, "none"):
            dsc.apply_offload(draft, "optimizer", optimizer_device or "cpu", None, f"{source} offload_optimizer_device")
        if offload_parameters or params_device not in (None, "none"):
            dsc.apply_offload(draft, "param", params_device or "cpu", None, f"{source} offload_params_device")
        draft.put("gradient_accumulation_steps", accumulation, f"{source}(gradient_accumulation_steps=...)")
        draft.put("gradient_clipping", clipping, f"{source}(gradient_clipping=...)")
        draft.put("zero_optimization.stage3_gather_16bit_weights_on_model_save", save_16bit,
                  f"{source}(zero3_save_16bit_model=...)")
        draft.put("zero_optimization.allgather_bucket_size", allgather, f"{source}(allgather_bucket_size=...)")
        draft.put("zero_optimization.reduce_bucket_size", reduce, f"{source}(reduce_bucket_size=...)")
        _ = self.stage  # a bad stage in the config fails now

    @property
    def config(self) -> dict[str, Any]:
        """The DeepSpeed config as assembled so far (``"auto"`` values are filled when the engine is built)."""
        return self.draft.config

    @property
    def stage(self) -> int:
        """The ZeRO stage (2 unless the arguments or the config say otherwise)."""
        stage = self.draft.own_int("zero_optimization.stage")
        if stage not in (None, 1, 2, 3):
            raise EmberConfigError(f"the DeepSpeed config's zero_optimization.stage={stage!r} must be 1, 2 or 3 "
                                   "(stage 0 is plain data parallelism: use strategy='ddp').")
        return stage or 2

    def configure(self, settings: Mapping[str, Any], source: str = "the launch config") -> None:
        """Apply the launch YAML's ``deepspeed_config`` section (Accelerate's keys)."""
        settings = dict(settings)
        dsc.check_yaml_keys(settings, source)
        if settings.get("deepspeed_config_file"):  # the file, then what the strategy's spelling asked for
            self.draft = self.draft.rebased(dsc.load_user_config(settings["deepspeed_config_file"]))
        where = f"{source}: deepspeed_config"
        for kind in ("optimizer", "param"):
            dsc.apply_offload(self.draft, kind, settings.get(f"offload_{kind}_device"),
                              settings.get(f"offload_{kind}_nvme_path"), f"{where}.offload_{kind}_device")
        self._set_options(settings.get("zero_stage"), False, False, None, None, settings.get("gradient_accumulation_steps"),
                          settings.get("gradient_clipping"), settings.get("zero3_save_16bit_model"), None, None,
                          source=where, stage_name="zero_stage")
        if settings.get("zero3_init_flag") is not None:
            self.zero3_init_flag = bool(settings["zero3_init_flag"])

    # agreement with ember's settings (TrainingSettings) ------------------------------------------------------
    def resolve_accumulation(self, requested: int | None, source: str) -> int | None:
        own = self.draft.own_int("gradient_accumulation_steps")
        if requested is not None and own is not None and own != requested:
            raise EmberConfigError(
                f"{source}={requested} (Trainer: accumulate_grad_batches), but the DeepSpeed config sets "
                f"gradient_accumulation_steps={own}. Make them agree, or leave one of them out (or \"auto\")."
            )
        self._accumulation = requested or own or 1
        return own if requested is None else requested

    def set_micro_batch_size(self, size: int) -> None:
        if self._micro is not None:
            return  # the first training loader decides, as DeepSpeed has one micro-batch size
        own = self.draft.own_int("train_micro_batch_size_per_gpu")
        if own is not None and own != size:
            raise EmberConfigError(
                f"the prepared training dataloader has batch_size={size} per process, but the DeepSpeed config "
                f"sets train_micro_batch_size_per_gpu={own}. Make them agree, or set it to \"auto\"."
            )
        self._micro = size
        self._check_train_batch(size)
        for run in self._runs:
            run.engine.set_train_micro_batch_size(size)

    def _check_train_batch(self, micro: int) -> None:
        total = self.draft.own_int("train_batch_size")
        want = micro * self._accumulation * self.topology.dp_size
        if total is not None and total != want:
            raise EmberConfigError(
                f"the DeepSpeed config sets train_batch_size={total}, but ember trains with {micro} (batch_size per "
                f"process) x {self._accumulation} (accumulation) x {self.topology.dp_size} (processes) = {want}. "
                "Make them agree, or set train_batch_size to \"auto\"."
            )

    def negotiate_precision(self, precision: Precision) -> Precision:
        dsc.precision_section(dsc.ConfigDraft(dsc.load_user_config(self.config)), precision.name)  # fail now
        self._precision_name = precision.name
        return DeepSpeedPrecision(precision.name)

    # lifecycle -------------------------------------------------------------------------------------------------
    def setup_environment(self) -> None:
        self._owns_group = init_process_group(self.process, self.device, self.timeout, self.backend, self.name)
        if self._owns_group:
            close_at_exit(self, DeepSpeedStrategy.teardown)

    def teardown(self) -> None:
        for run in self._runs:
            with contextlib.suppress(Exception):  # releases the engine's hooks and buffers
                run.engine.destroy()
        self._runs.clear()
        if self._owns_group:
            destroy_process_group()
            self._owns_group = False

    def distributed_type(self) -> str:
        return "DEEPSPEED"

    def describe(self) -> str:
        return f"model wrapped in a DeepSpeed ZeRO-{self.stage} engine on {self.device}"

    def module_init_context(self, empty_init: bool | None = None) -> contextlib.AbstractContextManager[Any]:
        """Under ``zero3_init_flag`` with stage 3, modules are built already partitioned (``deepspeed.zero.Init``)."""
        if not (self.zero3_init_flag and self.stage == 3):
            return super().module_init_context(empty_init)
        deepspeed = self._import()
        dtype = _DTYPES.get(dsc.PRECISION_SECTIONS.get(self._precision_name) or "", torch.float32)
        full = self._engine_config(None)
        config = {k: v for k, v in full.items() if k in ("zero_optimization", "bf16", "fp16")}  # no batch sizes:
        config["train_micro_batch_size_per_gpu"] = 1  # zero.Init checks them against a world size of 1
        return deepspeed.zero.Init(config_dict_or_path=config, dtype=dtype)  # type: ignore[no-any-return]

    # models and optimizers -------------------------------------------------------------------------------------
    def setup(self, module: torch.nn.Module, optimizers: Sequence[torch.optim.Optimizer]
              ) -> tuple[torch.nn.Module, list[torch.optim.Optimizer]]:
        wrapped = self.setup_module(module)
        if len(optimizers) > 1:
            raise EmberConfigError(
                f"DeepSpeed steps one optimizer per model, but {len(optimizers)} optimizers update "
                f"{type(module).__name__}. Put their parameter groups into one optimizer."
            )
        return wrapped, [self.setup_optimizer(opt) for opt in optimizers]

    def setup_module(self, module: torch.nn.Module) -> torch.nn.Module:
        wrapped = DeepSpeedModel(module)
        self._pending.append(weakref.ref(wrapped))
        return wrapped

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        ids = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for ref in list(self._pending):
            model = ref()
            if model is not None and ids & {id(p) for p in model.module.parameters()}:
                self._pending.remove(ref)
                self._build(model, optimizer)
                return optimizer
        raise EmberConfigError(
            f"DeepSpeed builds its engine from a model and its optimizer together, but no prepared model without an "
            f"optimizer owns the parameters of this {type(optimizer).__name__}. Prepare the model first (or in the "
            "same prepare() call), and one optimizer per model."
        )

    def _import(self) -> Any:
        if self.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # read by DeepSpeed when it is first imported
        for key, value in (("LOCAL_RANK", self.process.local_rank), ("RANK", self.process.rank),
                           ("WORLD_SIZE", self.process.world_size)):  # DeepSpeed reads them (one process: unset)
            os.environ.setdefault(key, str(value))
        import deepspeed
        from deepspeed.accelerator import get_accelerator

        wanted = "cuda" if self.device.type == "cuda" else self.device.type
        if get_accelerator().device_name() != wanted:
            raise EmberConfigError(
                f"DeepSpeed was set up for {get_accelerator().device_name()!r} but ember trains on {self.device}. "
                f"Set DS_ACCELERATOR={wanted} before starting the script."
            )
        deepspeed.utils.logging.logger.setLevel(self.logging_level)
        return deepspeed

    def _engine_config(self, module: torch.nn.Module | None) -> dict[str, Any]:
        """The config with every ``"auto"`` value filled from ember's settings."""
        draft = dsc.ConfigDraft(dsc.load_user_config(self.config))
        micro = self._micro or draft.own_int("train_micro_batch_size_per_gpu") or self._derived_micro() or 1
        self._check_train_batch(micro)
        draft.set("zero_optimization.stage", self.stage)
        draft.set("train_micro_batch_size_per_gpu", micro)
        draft.set("gradient_accumulation_steps", self._accumulation)
        draft.set("train_batch_size", micro * self._accumulation * self.topology.dp_size)
        if draft.is_open("gradient_clipping"):
            draft.set("gradient_clipping", 0.0)  # ember clips per step with clip_grad_norm_'s max_norm
        dsc.precision_section(draft, self._precision_name)
        for key, value in (("zero_allow_untested_optimizer", True), ("zero_force_ds_cpu_optimizer", False)):
            if draft.get(key) is None:
                draft.set(key, value)
        if draft.get("zero_optimization.elastic_checkpoint"):
            raise EmberConfigError("zero_optimization.elastic_checkpoint is not supported: ember saves each rank's "
                                   "ZeRO partition for resuming on the same world size. Remove the key.")
        dsc.fill_model_autos(draft, module)
        left = dsc.remaining_autos(draft.config)
        if left:
            raise EmberConfigError(f"ember cannot fill the DeepSpeed config's \"auto\" value(s) {left}; set them.")
        return draft.config

    def _derived_micro(self) -> int | None:
        total = self.draft.own_int("train_batch_size")
        return None if total is None else max(1, total // (self._accumulation * self.topology.dp_size))

    def _build(self, model: DeepSpeedModel, optimizer: torch.optim.Optimizer) -> None:
        deepspeed = self._import()
        from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

        config = self._engine_config(model.module)
        fields = DeepSpeedZeroConfig.model_fields
        valid = [*fields, *(f.alias for f in fields.values() if f.alias)]
        dsc.check_zero_keys(config.get("zero_optimization", {}), valid)
        engine, *_ = deepspeed.initialize(model=model.module, optimizer=optimizer, config=config,
                                          dist_init_required=False)
        model.__dict__["engine"] = engine
        self._runs.append(_Run(model, engine, self.stage))

    def unwrap(self, module: torch.nn.Module) -> torch.nn.Module:
        return module.module if isinstance(module, DeepSpeedModel) else module

    def _run_for(self, module: torch.nn.Module | None = None, optimizer: Any = None) -> _Run | None:
        for run in self._runs:
            if module is not None and module in (run.model, run.model.module):
                return run
            if optimizer is not None and run.engine.optimizer.optimizer is optimizer:
                return run
        if module is None and optimizer is None and len(self._runs) == 1:
            return self._runs[0]
        return None

    def _require(self, module: torch.nn.Module | None = None, optimizer: Any = None) -> _Run:
        run = self._run_for(module, optimizer)
        if run is None:
            raise EmberConfigError(
                "DeepSpeed has no engine for this call: prepare the model together with its optimizer first, and "
                "with several prepared models pass the model (backward runs through one engine at a time)."
            )
        return run

    # the step ---------------------------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor, module: torch.nn.Module | None = None, **kwargs: Any) -> None:
        unsupported = sorted(set(kwargs) - {"retain_graph"})
        if unsupported:
            raise EmberConfigError(f"backward({', '.join(unsupported)}=...) is not supported under DeepSpeed; the "
                                   "engine's backward takes retain_graph only.")
        run = self._require(module)
        run.engine.set_gradient_accumulation_boundary(self._sync)
        run.engine.backward(loss, retain_graph=bool(kwargs.get("retain_graph", False)), scale_wrt_gas=False)

    @contextlib.contextmanager
    def _unsynced(self) -> Iterator[None]:
        self._sync = False
        try:
            yield
        finally:
            self._sync = True

    def no_backward_sync(self, module: torch.nn.Module) -> contextlib.AbstractContextManager[Any]:
        """Inside an accumulation window: the engine is told the window has not ended (ZeRO-2/3 still reduce
        into their partitions; ZeRO-1 reduces at the window's end)."""
        return self._unsynced()

    def scale_gradients_(self, optimizer: torch.optim.Optimizer, factor: float | torch.Tensor) -> None:
        run = self._require(optimizer=optimizer)
        run.factor = (run.factor or 1.0) * float(factor)

    def discard_gradients_(self, optimizer: torch.optim.Optimizer) -> None:
        """A step ember skips: the engine steps as on an fp16 overflow (its gradients dropped, no update)."""
        run = self._require(optimizer=optimizer)
        zero_opt = run.engine.optimizer

        def overflow(*args: Any, **kwargs: Any) -> bool:
            zero_opt.overflow = True
            return True

        names = ("check_overflow", "_overflow_check_and_loss_scale_update", "check_grad_overflow")
        saved = {name: zero_opt.__dict__[name] for name in names if name in zero_opt.__dict__}
        zero_opt.check_overflow = zero_opt._overflow_check_and_loss_scale_update = overflow  # ZeRO-1/2, ZeRO-3
        zero_opt.check_grad_overflow = True
        try:
            run.engine.step()
        finally:
            for name in names:
                zero_opt.__dict__.pop(name, None)
            zero_opt.__dict__.update(saved)
        run.clip = run.factor = None

    @contextlib.contextmanager
    def _step_scale(self, run: _Run) -> Iterator[Any]:
        """This step's clipping and accumulation rescale, applied through the ZeRO optimizer's own
        unscale-and-clip (the rescale as a loss scale), restored afterwards."""
        zero_opt = run.engine.optimizer
        clip, custom, external = zero_opt.clip_grad, zero_opt.custom_loss_scaler, zero_opt.external_loss_scale
        if run.clip is not None:
            zero_opt.clip_grad = run.clip
        if run.factor is not None and run.factor != 1.0:
            zero_opt.override_loss_scale(float(zero_opt.loss_scale) / run.factor)
        try:
            yield zero_opt
        finally:
            zero_opt.clip_grad, zero_opt.custom_loss_scaler, zero_opt.external_loss_scale = clip, custom, external

    def clip_grad_norm_(self, module: torch.nn.Module | None, parameters: Iterable[torch.nn.Parameter],
                        max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
        """Clip this step's gradients (all of the model's, over every rank's partition) to ``max_norm`` when the
        engine steps; returns their global L2 norm before clipping."""
        run = self._require(module)
        if float(norm_type) != 2.0:
            raise EmberConfigError(f"clip_grad_norm_(norm_type={norm_type}) under DeepSpeed: DeepSpeed clips by the "
                                   "L2 norm only. Use norm_type=2.")
        self._check_clip(max_norm)
        run.clip = float(max_norm)
        with self._step_scale(run) as zero_opt:
            if hasattr(zero_opt, "scaled_global_norm"):
                scaled = zero_opt.scaled_global_norm()
            else:
                from deepspeed.runtime.utils import combine_grad_norm_groups

                scaled = combine_grad_norm_groups(zero_opt._get_norm_groups())
            norm = torch.as_tensor(scaled, dtype=torch.float32) / float(zero_opt.loss_scale)
        return norm.to(self.device)

    def _check_clip(self, max_norm: float) -> None:
        own = self.draft.own_float("gradient_clipping")
        if own and own != float(max_norm):
            raise EmberConfigError(
                f"clip_grad_norm_(max_norm={max_norm}) (Trainer: gradient_clip_val), but the DeepSpeed config sets "
                f"gradient_clipping={own}. Make them agree, or set gradient_clipping to \"auto\"."
            )

    def clip_grad_value_(self, module: torch.nn.Module | None, parameters: Iterable[torch.nn.Parameter],
                         clip_value: float) -> None:
        raise EmberConfigError("clipping gradients by value is not supported under DeepSpeed (its gradients are "
                               "partitioned inside the engine). Clip by norm: gradient_clip_algorithm='norm'.")

    def optimizer_step(self, optimizer: torch.optim.Optimizer, precision: Precision, **kwargs: Any) -> Any:
        if kwargs.get("closure") is not None:
            raise EmberConfigError("optimizer.step(closure) is not supported under DeepSpeed.")
        run = self._require(optimizer=optimizer)
        with self._step_scale(run) as zero_opt:
            run.engine.step()
            skipped = bool(getattr(zero_opt, "overflow", False))
        run.clip = run.factor = None
        return skipped

    # state ------------------------------------------------------------------------------------------------------
    def model_state_dict(self, module: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The full state dict; under ZeRO-3 gathered one parameter at a time (a collective: call on every rank;
        only rank 0 gets the tensors)."""
        run, inner = self._run_for(module), self.unwrap(module)
        if run is None or run.stage < 3:
            return dict(inner.state_dict())
        state = dict(dss.gathered_params(inner))
        if self.process.rank == 0:
            state.update({n: b for n, b in inner.named_buffers()})
        return state

    def load_model_state_dict(self, module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
        run, inner = self._run_for(module), self.unwrap(module)
        if run is None:
            inner.load_state_dict(state)
            return
        if run.stage < 3:
            inner.load_state_dict(state)
        else:
            dss.scatter_params(inner, state)
        run.engine.optimizer.refresh_fp32_params()  # training continues from these weights

    def save_checkpoint(self, tmp: Path, models: Sequence[tuple[str, torch.nn.Module]],
                        optimizers: Sequence[tuple[str, torch.nn.Module | None, torch.optim.Optimizer]]) -> None:
        """Per-rank ZeRO partitions through ember's checkpoint package (see :mod:`._deepspeed_state`)."""
        from ember import checkpoint as ckpt

        rank, dp_size = self.process.rank, self.topology.dp_size
        for name, model in models:
            run = self._run_for(model)
            if run is None:
                super().save_checkpoint(tmp, [(name, model)], [])
                continue
            gather = bool(self.draft.get("zero_optimization.stage3_gather_16bit_weights_on_model_save"))
            dss.write_model_files(tmp, name, self.unwrap(model), run.stage, rank, gather)
        for name, owner, optimizer in optimizers:
            run = self._run_for(optimizer=optimizer)
            if run is None:
                super().save_checkpoint(tmp, [], [(name, owner, optimizer)])
                continue
            ckpt.save_state(tmp, dss.optimizer_file(name, rank), dss.optimizer_state(run.engine, run.stage, dp_size))

    def load_checkpoint(self, path: Path, models: Sequence[tuple[str, torch.nn.Module]],
                        optimizers: Sequence[tuple[str, torch.nn.Module | None, torch.optim.Optimizer]]) -> None:
        from ember import checkpoint as ckpt

        rank, dp_size = self.process.rank, self.topology.dp_size
        for name, model in models:
            run = self._run_for(model)
            if run is None or run.stage < 3:
                self.unwrap(model).load_state_dict(ckpt.read_tensors(path, f"{name}.safetensors"))
            else:
                file = dss.model_file(name, rank)
                dss.load_zero3_local_state(self.unwrap(model), ckpt.read_tensors(path, file), str(path / file))
        for name, owner, optimizer in optimizers:
            run = self._run_for(optimizer=optimizer)
            if run is None:
                super().load_checkpoint(path, [], [(name, owner, optimizer)])
                continue
            file = dss.optimizer_file(name, rank)
            state = ckpt.load_state(path, file)
            dss.load_optimizer_state(run.engine, state, run.stage, dp_size, str(path / f"{file}.json"))

    def __repr__(self) -> str:
        return f"DeepSpeedStrategy(stage={self.stage}, device={self.device})"


@dataclass
class DeepSpeedPlugin:
    """Accelerate's ``DeepSpeedPlugin``: ``Accelerator(deepspeed_plugin=DeepSpeedPlugin(zero_stage=2, ...))``.

    ``hf_ds_config`` is a DeepSpeed config (dict or JSON path); the other fields fill it in, and must agree with
    it where both say something. ``gradient_accumulation_steps`` becomes the Accelerator's accumulation when
    the Accelerator is not given one. ``gradient_clipping`` left unset means ember clips per step with the
    ``max_norm`` given to ``clip_grad_norm_`` (Accelerate would clip at 1.0).

    >>> DeepSpeedPlugin(zero_stage=3, offload_param_device="cpu").to_strategy().config["zero_optimization"]
    {'stage': 3, 'offload_param': {'device': 'cpu'}}
    """

    hf_ds_config: Any = None
    gradient_accumulation_steps: int | None = None
    gradient_clipping: float | None = None
    zero_stage: int | None = None
    is_train_batch_min: bool = True
    offload_optimizer_device: str | None = None
    offload_param_device: str | None = None
    offload_optimizer_nvme_path: str | None = None
    offload_param_nvme_path: str | None = None
    zero3_init_flag: bool | None = None
    zero3_save_16bit_model: bool | None = None
    transformer_moe_cls_names: str | None = None
    enable_msamp: bool | None = None
    msamp_opt_level: str | None = None
    #: the DeepSpeed config these fields describe (``"auto"`` values are filled when the engine is built)
    deepspeed_config: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        self.to_strategy()  # contradictions and bad values fail here, as Accelerate's plugin does

    def to_strategy(self) -> DeepSpeedStrategy:
        """The :class:`DeepSpeedStrategy` these fields describe (what the Accelerator uses)."""
        for unsupported in ("transformer_moe_cls_names", "enable_msamp", "msamp_opt_level"):
            if getattr(self, unsupported):
                raise EmberConfigError(f"DeepSpeedPlugin({unsupported}=...) is not supported by ember; remove it.")
        strategy = DeepSpeedStrategy(config=self.hf_ds_config, zero3_init_flag=self.zero3_init_flag)
        strategy._set_options(self.zero_stage, False, False, None, None, self.gradient_accumulation_steps,
                              self.gradient_clipping, self.zero3_save_16bit_model, None, None,
                              source="DeepSpeedPlugin", stage_name="zero_stage")
        for kind in ("optimizer", "param"):
            dsc.apply_offload(strategy.draft, kind, getattr(self, f"offload_{kind}_device"),
                              getattr(self, f"offload_{kind}_nvme_path"), f"DeepSpeedPlugin(offload_{kind}_device=...)")
        self.deepspeed_config = strategy.config
        return strategy
