"""Annotations for api_coverage.py: why a name is missing, or what differs on purpose (keyed by section, name)."""

from __future__ import annotations

import re
from collections.abc import Callable

INTRO = """# API coverage, name by name

What ember covers of Accelerate's and Lightning's public API. The name lists are generated from the installed
packages (accelerate {accelerate}, lightning {lightning}) by `python acceptance/api_coverage.py > docs/coverage.md`
(`pip install -c constraints.txt -e ".[acceptance]"` first), so nothing is left out; the notes come from
`acceptance/coverage_notes.py`. "yes" means the name exists in ember's counterpart (`ember.Accelerator`,
`ember`, `ember.utils`, `ember.Trainer`, `ember.Module`, `ember.LightningDataModule`, `ember.Callback`,
`ember.callbacks`, `ember.loggers`, `ember.profilers`); "partly" means it exists but lacks some of the anchor's
arguments; a note on a "yes" row says what behaves differently on purpose.

Differences that hold everywhere, on purpose:

- **Checkpoints are data.** `save_state`/`save_checkpoint` write safetensors + JSON into a directory committed by
  rename (never pickles); `load_state`/`ckpt_path` never unpickle. Accelerate writes `optimizer.bin`,
  `random_states_*.pkl`; Lightning a pickled `.ckpt` file.
- **Resume is exact.** `load_state` also restores the data position: a prepared loader continues mid-epoch where
  the saved run was; `len(loader)` stays a whole epoch (as Accelerate's, so its resume arithmetic holds) and
  `loader.batches_left` is what the next `iter()` yields. See
  [drop-in.md](drop-in.md) for what this does to Accelerate's `skip_first_batches` recipe.
- **Schedulers step once per optimizer step** (not once per process as Accelerate's prepared scheduler does, not on
  steps skipped by fp16 overflow or accumulation); size schedules with `accelerator.optimizer_steps(loader)`.
- **Gradient accumulation averages.** `backward` divides by the accumulation steps and no-syncs inside a window.
"""

NOTES: dict[tuple[str, str], str] = {
    # ---------------------------------------------------------------------------------------- Accelerator
    ("Accelerator", "mixed_precision"): "returns Accelerate's strings (`no`/`fp16`/`bf16`); ember's own name "
    "(`bf16-mixed`, ...) is `accelerator.precision.name`",
    ("Accelerator", "distributed_type"): "a `DistributedType` that compares equal to Accelerate's (`NO`, `MULTI_CPU`, "
    "`MULTI_GPU`, `FSDP`, `DEEPSPEED`)",
    ("Accelerator", "save_state"): "safetensors + JSON, atomic; also saves the dataloader position (exact resume)",
    ("Accelerator", "load_state"): "restores the dataloader position too: no `skip_first_batches` needed after it",
    ("Accelerator", "skip_first_batches"): "positions the epoch at batch N from its start (absolute, not relative "
    "to where `load_state` left it)",
    ("Accelerator", "prepare"): "prints once what it changed (sampler, wrapping, device moves)",
    ("Accelerator", "prepare_scheduler"): "the scheduler steps once per optimizer step (Accelerate: once per "
    "process); a one-time notice says so in multi-process runs",
    ("Accelerator", "backward"): "divides by `gradient_accumulation_steps` (as Accelerate); `num_items=` weights "
    "by token count across micro-batches and ranks",
    ("Accelerator", "save"): "writes safetensors for tensor dicts; other objects are refused (no pickle)",
    ("Accelerator", "save_model"): "safetensors (+ `config.json` for transformers models)",
    ("Accelerator", "ao_recipe_handler"): "fp8 through torchao is not implemented",
    ("Accelerator", "fp8_recipe_handler"): "fp8 training is not implemented (`mixed_precision=\"fp8\"` is refused)",
    ("Accelerator", "te_recipe_handler"): "fp8 through Transformer Engine is not implemented",
    ("Accelerator", "msamp_recipe_handler"): "fp8 through MS-AMP is not implemented",
    ("Accelerator", "fp8_backend"): "fp8 training is not implemented",
    ("Accelerator", "fp8_enabled"): "fp8 training is not implemented",
    ("Accelerator", "has_fp8_handler"): "fp8 training is not implemented",
    ("Accelerator", "delayed_fp8_autocast"): "fp8 training is not implemented",
    ("Accelerator", "autocast_handler"): "no `AutocastKwargs`: autocast follows the precision",
    ("Accelerator", "autocast"): "no `AutocastKwargs` argument",
    ("Accelerator", "ddp_handler"): "the handlers are applied to the strategy at construction, not kept as "
    "attributes",
    ("Accelerator", "init_handler"): "see `ddp_handler`; the timeout is `Accelerator(timeout=...)`",
    ("Accelerator", "scaler_handler"): "see `ddp_handler`",
    ("Accelerator", "scaler"): "the GradScaler lives in the fp16 precision plugin (`accelerator.precision`)",
    ("Accelerator", "native_amp"): "internal flag of Accelerate",
    ("Accelerator", "clear"): "alias of `free_memory` in Accelerate; use `free_memory`",
    ("Accelerator", "flag_tensor"): "internal storage of Accelerate's `set_trigger`",
    ("Accelerator", "has_lomo_optimizer"): "LOMO optimizers are not supported",
    ("Accelerator", "lomo_backward"): "LOMO optimizers are not supported",
    ("Accelerator", "context_parallel_rank"): "ember's mesh has a `cp` dimension, but no per-dimension rank "
    "properties on the Accelerator",
    ("Accelerator", "data_parallel_rank"): "no per-dimension rank properties (use `process_index` with DDP/FSDP)",
    ("Accelerator", "data_parallel_shard_rank"): "no per-dimension rank properties",
    ("Accelerator", "pipeline_parallel_rank"): "no pipeline parallelism",
    ("Accelerator", "tensor_parallel_rank"): "no tensor-parallel properties on the Accelerator",
    ("Accelerator", "torch_device_mesh"): "the mesh is `accelerator.strategy.topology`",
    ("Accelerator", "parallelism_config"): "no `ParallelismConfig`: the strategy carries the topology",
    ("Accelerator", "is_composable_parallelism_enabled"): "no `ParallelismConfig`",
    ("Accelerator", "maybe_context_parallel"): "context parallelism is not exposed on the Accelerator",
    ("Accelerator", "deepspeed_plugin"): "pass `deepspeed_plugin=` (accepted); the built strategy is "
    "`accelerator.strategy`",
    ("Accelerator", "deepspeed_ulysses_dl_adapter"): "DeepSpeed sequence parallelism is not supported",
    ("Accelerator", "is_fsdp2"): "ember's FSDP is always FSDP2 (`fully_shard`)",
    ("Accelerator", "dispatch_batches"): "`dispatch_batches` is not supported: every process reads its own shard",
    ("Accelerator", "split_batches"): "set through `DataLoaderConfiguration(split_batches=True)`, read from "
    "`accelerator.dataloader_config`",
    ("Accelerator", "non_blocking"): "copies to the GPU are always non-blocking from pinned memory",
    ("Accelerator", "use_seedable_sampler"): "ember's sampler is always seeded and resumable",
    ("Accelerator", "use_stateful_dataloader"): "ember's prepared loaders are always resumable",
    ("Accelerator", "join_uneven_inputs"): "ember evens batches across processes (`even_batches=True`) instead",
    ("Accelerator", "log_with"): "the trackers are `accelerator.trackers` (iterable)",
    ("Accelerator", "logging_dir"): "trackers write under `project_dir` (`ProjectConfiguration.logging_dir` is read)",
    ("Accelerator", "multi_device"): "use `num_processes > 1`",
    ("Accelerator", "on_local_process"): "decorator not provided; `on_process` and `on_local_main_process` are",
    ("Accelerator", "register_load_state_pre_hook"): "no state hooks: register objects with "
    "`register_for_checkpointing` (their `state_dict` is saved as JSON/safetensors)",
    ("Accelerator", "register_save_state_pre_hook"): "see `register_load_state_pre_hook`",
    ("Accelerator", "rng_types"): "ember always saves and restores python, numpy, torch (CPU and CUDA) RNG states",
    ("Accelerator", "save_iteration"): "checkpoint names are `step-XXXXXXXX` from the optimizer step",
    ("Accelerator", "should_save_model"): "internal to Accelerate",
    ("Accelerator", "step_scheduler_with_optimizer"): "accepted as an argument; not kept as an attribute",
    ("Accelerator", "trigger_sync_in_backward"): "use `no_sync` / `accumulate`",
    ("Accelerator", "verify_device_map"): "big-model inference (device maps) is out of scope",
    ("Accelerator", "profile_handler"): "",
    ("Accelerator", "get_state_dict"): "always the unwrapped module's full state dict",
    ("Accelerator", "prepare_data_loader"): "Accelerate's first argument is named `data_loader`; positional calls "
    "work",
    ("Accelerator", "prepare_model"): "`evaluation_mode` is not accepted",
    ("Accelerator", "prepare_optimizer"): "`device_placement` is not accepted (the optimizer follows its model)",
    ("Accelerator", "unwrap_model"): "`keep_torch_compile` is not accepted",
    ("Accelerator()", "split_batches"): "use `dataloader_config=DataLoaderConfiguration(split_batches=True)`",
    ("Accelerator()", "torch_tp_plugin"): "no tensor-parallel plugin",
    ("Accelerator()", "megatron_lm_plugin"): "Megatron-LM is not supported",
    ("Accelerator()", "rng_types"): "every RNG is saved and restored (see `rng_types`)",
    ("Accelerator()", "gradient_accumulation_plugin"): "use `gradient_accumulation_steps=`",
    ("Accelerator()", "dynamo_backend"): "`ember launch --dynamo_backend` / the YAML's `dynamo_config` compile the "
    "model",
    ("Accelerator()", "dynamo_plugin"): "see `dynamo_backend`",
    ("Accelerator()", "deepspeed_plugins"): "one DeepSpeed plugin per Accelerator",
    ("Accelerator()", "parallelism_config"): "no `ParallelismConfig`",
    ("Accelerator()", "mixed_precision"): "also takes ember's names (`bf16-mixed`, `16-mixed`, `bf16-true`, ...)",
    # ---------------------------------------------------------------------------------------- accelerate
    ("accelerate", "AutocastKwargs"): "autocast follows the precision; no per-call settings",
    ("accelerate", "ParallelismConfig"): "topology comes from the strategy",
    ("accelerate", "PartialState"): "no process-wide singleton (rule: no hidden global state); use "
    "`ember.ProcessInfo.from_env()` or an Accelerator",
    ("accelerate", "debug_launcher"): "use `ember launch --cpu --num_processes 2`",
    ("accelerate", "notebook_launcher"): "no notebook launcher: `Trainer(devices=N)` starts its own processes",
    ("accelerate", "prepare_pippy"): "pipeline-parallel inference is out of scope",
    ("accelerate", "is_rich_available"): "ember's rich progress bar imports `rich` lazily",
    ("accelerate", "synchronize_rng_states"): "ember's sampler derives each epoch's order from a seed; no RNG sync "
    "is needed",
    ("accelerate", "skip_first_batches"): "see `Accelerator.skip_first_batches`",
    ("accelerate", "init_empty_weights"): "use `accelerator.init_module()` (meta-device / empty init for the strategy)",
    ("accelerate", "init_on_device"): "use `accelerator.init_module()`",
    # ---------------------------------------------------------------------------------------- Trainer
    ("Trainer", "barebones"): "see the argument",
    ("Trainer", "enable_autolog_hparams"): "see the argument",
    ("Trainer", "reload_dataloaders_every_n_epochs"): "see the argument",
    ("Trainer", "ckpt_path"): "the checkpoint a run resumed from is not kept as a property",
    ("Trainer", "device_ids"): "use `trainer.strategy` / `trainer.accelerator`",
    ("Trainer", "distributed_sampler_kwargs"): "ember shards through its own resumable sampler",
    ("Trainer", "enable_validation"): "internal to Lightning",
    ("Trainer", "evaluating"): "use `trainer.validating` / `trainer.testing`",
    ("Trainer", "fit_loop"): "ember's loops are plain functions, not replaceable loop objects",
    ("Trainer", "validate_loop"): "see `fit_loop`",
    ("Trainer", "test_loop"): "see `fit_loop`",
    ("Trainer", "predict_loop"): "see `fit_loop`",
    ("Trainer", "gradient_clip_val"): "a Trainer argument, not kept as an attribute",
    ("Trainer", "limit_train_batches"): "a Trainer argument, not kept as an attribute",
    ("Trainer", "limit_val_batches"): "a Trainer argument, not kept as an attribute",
    ("Trainer", "limit_test_batches"): "a Trainer argument, not kept as an attribute",
    ("Trainer", "limit_predict_batches"): "a Trainer argument, not kept as an attribute",
    ("Trainer", "val_check_batch"): "internal to Lightning",
    ("Trainer", "init_module"): "build the model inside `accelerator.init_module()`; no Trainer method",
    ("Trainer", "num_predict_batches"): "not exposed",
    ("Trainer", "precision_plugin"): "the precision object is the Accelerator's (`trainer.accelerator.precision`)",
    ("Trainer", "scaler"): "the GradScaler lives in the fp16 precision plugin",
    ("Trainer", "print"): "use `self.print` in the module",
    ("Trainer", "received_sigterm"): "`Trainer(handle_signals=True)` checkpoints and exits 75 on SIGTERM",
    ("Trainer", "train_dataloader"): "the prepared loaders are not exposed as Trainer properties",
    ("Trainer", "val_dataloaders"): "see `train_dataloader`",
    ("Trainer", "test_dataloaders"): "see `train_dataloader`",
    ("Trainer", "predict_dataloaders"): "see `train_dataloader`",
    ("Trainer", "fit"): "`weights_only` does not apply: checkpoints hold no pickles",
    ("Trainer", "validate"): "`weights_only` does not apply",
    ("Trainer", "test"): "`weights_only` does not apply",
    ("Trainer", "predict"): "`weights_only` does not apply",
    ("Trainer", "save_checkpoint"): "a directory of safetensors + JSON (the `.ckpt` name is kept as the directory "
    "name); `torch.load` on it says how to load it",
    ("Trainer", "strategy"): "ember's Strategy objects, not Lightning's",
    # ---------------------------------------------------------------------------------------- LightningModule
    ("LightningModule", "CHECKPOINT_HYPER_PARAMS_KEY"): "hyperparameters are stored as JSON in the checkpoint "
    "directory",
    ("LightningModule", "CHECKPOINT_HYPER_PARAMS_NAME"): "see `CHECKPOINT_HYPER_PARAMS_KEY`",
    ("LightningModule", "CHECKPOINT_HYPER_PARAMS_TYPE"): "see `CHECKPOINT_HYPER_PARAMS_KEY`",
    ("LightningModule", "all_gather"): "not provided on the module; `self.trainer.accelerator.gather(...)` does it",
    ("LightningModule", "allow_zero_length_dataloader_with_multiple_devices"): "not supported",
    ("LightningModule", "configure_sharded_model"): "deprecated in Lightning; use `configure_model`",
    ("LightningModule", "device_mesh"): "the mesh is the strategy's (`trainer.strategy.topology`)",
    ("LightningModule", "dtype"): "not tracked; the precision plugin decides compute dtypes",
    ("LightningModule", "example_input_array"): "the TensorBoard logger reads it when set; no default attribute",
    ("LightningModule", "fabric"): "ember has no Fabric",
    ("LightningModule", "freeze"): "use `requires_grad_(False)` and `eval()`",
    ("LightningModule", "unfreeze"): "use `requires_grad_(True)` and `train()`",
    ("LightningModule", "hparams_initial"): "`hparams` only",
    ("LightningModule", "on_after_batch_transfer"): "batch-transfer hooks are not called (batches are moved by the "
    "prepared loader on a side stream)",
    ("LightningModule", "on_before_batch_transfer"): "see `on_after_batch_transfer`",
    ("LightningModule", "transfer_batch_to_device"): "see `on_after_batch_transfer`",
    ("LightningModule", "on_gpu"): "use `self.device.type == \"cuda\"`",
    ("LightningModule", "on_predict_model_eval"): "the model is put in eval mode by the loop; not overridable",
    ("LightningModule", "on_test_model_eval"): "see `on_predict_model_eval`",
    ("LightningModule", "on_test_model_train"): "see `on_predict_model_eval`",
    ("LightningModule", "on_validation_model_eval"): "see `on_predict_model_eval`",
    ("LightningModule", "on_validation_model_train"): "see `on_predict_model_eval`",
    ("LightningModule", "on_validation_model_zero_grad"): "internal to Lightning",
    ("LightningModule", "train_dataloader"): "a hook you define: the Trainer calls it when `fit` gets no loader "
    "(no default method)",
    ("LightningModule", "val_dataloader"): "a hook you define (no default method)",
    ("LightningModule", "test_dataloader"): "a hook you define (no default method)",
    ("LightningModule", "predict_dataloader"): "a hook you define (no default method)",
    ("LightningModule", "prepare_data"): "on the data module (`LightningDataModule.prepare_data`); not on the module",
    ("LightningModule", "prepare_data_per_node"): "see `prepare_data`",
    ("LightningModule", "remove_ignored_hparams"): "internal to Lightning",
    ("LightningModule", "strict_loading"): "loading is always strict",
    ("LightningModule", "to_onnx"): "export is out of scope: call `torch.onnx.export` on the module",
    ("LightningModule", "to_tensorrt"): "export is out of scope",
    ("LightningModule", "to_torchscript"): "export is out of scope: call `torch.jit.script` on the module",
    ("LightningModule", "load_from_checkpoint"): "reads ember's checkpoint directories (hyperparameters from JSON, "
    "overrides as keyword arguments); no pickle",
    ("LightningModule", "log"): "values stay on the device until the log interval; `torchmetrics.Metric` objects "
    "are computed and reset at epoch end",
    ("LightningModule", "manual_backward"): "",
    # ---------------------------------------------------------------------------------------- LightningDataModule
    ("LightningDataModule", "CHECKPOINT_HYPER_PARAMS_KEY"): "see the module's",
    ("LightningDataModule", "CHECKPOINT_HYPER_PARAMS_NAME"): "see the module's",
    ("LightningDataModule", "CHECKPOINT_HYPER_PARAMS_TYPE"): "see the module's",
    ("LightningDataModule", "allow_zero_length_dataloader_with_multiple_devices"): "not supported",
    ("LightningDataModule", "hparams_initial"): "`hparams` only",
    ("LightningDataModule", "load_from_checkpoint"): "data modules are not restored from checkpoints",
    ("LightningDataModule", "name"): "not provided",
    ("LightningDataModule", "on_after_batch_transfer"): "batch-transfer hooks are not called",
    ("LightningDataModule", "on_before_batch_transfer"): "batch-transfer hooks are not called",
    ("LightningDataModule", "transfer_batch_to_device"): "batch-transfer hooks are not called",
    ("LightningDataModule", "on_exception"): "not called on data modules",
    ("LightningDataModule", "remove_ignored_hparams"): "internal to Lightning",
    ("LightningDataModule", "trainer"): "not set on the data module",
    ("LightningDataModule", "train_dataloader"): "a hook you define (no default method)",
    ("LightningDataModule", "val_dataloader"): "a hook you define (no default method)",
    ("LightningDataModule", "test_dataloader"): "a hook you define (no default method)",
    ("LightningDataModule", "predict_dataloader"): "a hook you define (no default method)",
    # ---------------------------------------------------------------------------------------- Callback
    ("Callback", "on_predict_epoch_end"): "the predict loop calls the module's hook, not callbacks'",
    ("Callback", "on_predict_epoch_start"): "see `on_predict_epoch_end`",
    # ---------------------------------------------------------------------------------------- callbacks
    ("callbacks", "BackboneFinetuning"): "not provided",
    ("callbacks", "BaseFinetuning"): "not provided",
    ("callbacks", "BasePredictionWriter"): "not provided: `trainer.predict` returns the predictions",
    ("callbacks", "BatchSizeFinder"): "not provided (`ember.utils.find_executable_batch_size` for your own loop)",
    ("callbacks", "Checkpoint"): "`ModelCheckpoint` is the one checkpoint callback",
    ("callbacks", "DeviceStatsMonitor"): "not provided",
    ("callbacks", "EMAWeightAveraging"): "not provided",
    ("callbacks", "WeightAveraging"): "not provided",
    ("callbacks", "StochasticWeightAveraging"): "not provided",
    ("callbacks", "LambdaCallback"): "not provided: subclass `Callback`",
    ("callbacks", "ModelPruning"): "not provided",
    ("callbacks", "RichModelSummary"): "`ModelSummary` only",
    ("callbacks", "SpikeDetection"): "`Trainer(nonfinite=\"skip\"|\"halt\")` handles inf/NaN steps; no spike "
    "detection",
    ("callbacks", "ModelCheckpoint"): "writes checkpoint directories (safetensors + JSON), committed atomically",
    # ---------------------------------------------------------------------------------------- loggers
    ("loggers", "CometLogger"): "not provided",
    ("loggers", "LitLogger"): "not provided (a hosted service)",
    ("loggers", "WandbLogger"): "offline mode works without an account",
    ("loggers", "MLFlowLogger"): "local store",
    # ---------------------------------------------------------------------------------------- profilers
    ("profilers", "XLAProfiler"): "no TPU/XLA backend",
}


def _rx(pattern: str) -> Callable[[str], bool]:
    return lambda name: re.search(pattern, name) is not None


#: notes for groups of `accelerate.utils` names, tried in order when a name has no entry in NOTES
PATTERNS: dict[tuple[str, Callable[[str], bool]], str] = {
    ("accelerate.utils", _rx(r"^is_(aim|clearml|comet_ml|dvclive|swanlab|trackio|pandas|matplotlib|boto3|"
                             r"sagemaker|pytest|timm|torchvision|peft|torchdata|import_timer|rich|pynvml|amdsmi|"
                             r"triton)")): "availability probe for a package ember does not integrate",
    ("accelerate.utils", _rx(r"^is_(mlu|musa|npu|sdaa|xpu|hpu|neuron|habana|mps|torch_xla|xccl|rocm|cuda|fp16|"
                             r"weights_only|port_in_use|torch_version|bitsandbytes|bnb|4bit|8bit|pippy|lomo|"
                             r"megatron)")): "probe for hardware or a feature ember does not use; ember's probes "
    "are `is_bf16_available` and those of the packages it integrates",
    ("accelerate.utils", _rx(r"(?i)fp8|msamp|torchao|_ao_|^AORecipe|TERecipe|transformer_engine|^has_ao")):
        "fp8 training is not implemented",
    ("accelerate.utils", _rx(r"(?i)megatron|TrainStep$|avg_losses_across")): "Megatron-LM is not supported",
    ("accelerate.utils", _rx(r"(?i)xla|tpu")): "no TPU/XLA backend",
    ("accelerate.utils", _rx(r"(?i)bnb|quantiz|4bit|8bit")): "quantized loading (bitsandbytes) is out of scope",
    ("accelerate.utils", _rx(r"(?i)offload|device_map|dispatch|max_memory|balanced_memory|module_sizes|"
                             r"max_layer_size|tied_param|retie|set_module_tensor|align_module_device|"
                             r"named_module_tensors|load_checkpoint_in_model|dtype_byte_size|CustomDtype|"
                             r"calculate_maximum_sizes|convert_file_size|load_state_dict$|find_device|"
                             r"id_tensor_storage|ensure_weights_retied|get_module_children")):
        "big-model inference (device maps, offload) is out of scope: ember trains",
    ("accelerate.utils", _rx(r"(?i)fsdp")): "FSDP state goes through `save_state`/`load_state`/`save_model` "
    "(FSDP2, DCP shards)",
    ("accelerate.utils", _rx(r"(?i)deepspeed|GatheredParameters")): "DeepSpeed goes through "
    "`DeepSpeedPlugin`/`strategy=\"deepspeed\"`; its helpers are not re-exported",
    ("accelerate.utils", _rx(r"(?i)launch|_cmd_env|multi_gpu_env|sagemaker|sagemager|ComputeEnvironment|"
                             r"write_basic_config|numa|environment|^patch_env|env_variables|from_env$|"
                             r"_from_env|str_to_bool|cpu_distributed_information|get_gpu_info|"
                             r"check_os_kernel|p2p_ib")):
        "launcher and environment helpers: `ember launch` / `ember config` / `ember env` do this",
    ("accelerate.utils", _rx(r"^(broadcast|broadcast_object_list|gather|gather_object|reduce|pad_across_processes|"
                             r"wait_for_everyone|concatenate|pad_input_tensors|copy_tensor_to_devices)$")):
        "use the Accelerator's method of the same name",
    ("accelerate.utils", _rx(r"(?i)rng")): "ember saves and restores every RNG state and seeds each epoch's "
    "order; no RNG synchronisation helpers",
    ("accelerate.utils", _rx(r"_NAME$|^TORCH_|PROFILING_AVAILABLE")): "Accelerate's file names and internal "
    "constants (ember's checkpoint layout is in DESIGN.md)",
    ("accelerate.utils", _rx(r"(?i)compile|dynamo")): "`torch.compile` through `ember launch --dynamo_backend` or "
    "the YAML's `dynamo_config`",
    ("accelerate.utils", _rx(r"(?i)parallel|TorchContext|TorchTensor")): "tensor/context parallel configs are not "
    "exposed (the strategy's mesh has the dimensions)",
    ("accelerate.utils", _rx(r"^(recursively_apply|honor_type|is_namedtuple|is_torch_tensor|is_tensor_information|"
                             r"TensorInformation|initialize_tensors|slice_tensors|get_data_structure|"
                             r"listify|convert_to_fp32|convert_outputs_to_fp32|ignorant_find_batch_size|"
                             r"CannotPadNestedTensorWarning|merge_dicts|recursive_getattr|get_pretty_name|"
                             r"convert_bytes|compare_versions|extract_model_from_parallel|get_current_device_type|"
                             r"model_has_dtensor|is_compiled_module|has_compiled_regions|"
                             r"clean_state_dict_for_safetensors|extract_submodules_state_dict|convert_model|"
                             r"filter_first_and_last_linear_layers|are_libraries_initialized|tqdm|PrefixedDataset|"
                             r"has_transformer_engine_layers|is_peft_model|get_grad_scaler|"
                             r"get_mixed_precision_context_manager|get_model_tp_size)$")):
        "Accelerate's internal helper; not part of ember's API",
    ("accelerate.utils", _rx(r"^(save|load)$")): "`accelerator.save` / `load_state`; no pickling `load`",
    ("accelerate.utils", _rx(r"^(KwargsHandler|GradientAccumulationPlugin|AutocastKwargs|DynamoBackend|"
                             r"BnbQuantizationConfig|SageMakerDistributedType)$")):
        "not provided (see the Accelerator notes)",
}
