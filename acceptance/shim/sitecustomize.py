"""Stand-ins for the hub downloads of the anchors' example scripts (acceptance run only; never part of ember).

``run_anchor_examples.py`` copies this folder into a temporary directory and puts it first on ``PYTHONPATH``, so
every process of a case (the launcher's workers too) imports this module at start-up. It replaces only what would
reach the network, and only after the real library is imported:

- ``datasets.load_dataset("nyu-mll/glue" | "glue", "mrpc")``: a small synthetic sentence-pair set
  (``sentence1``, ``sentence2``, ``label``, ``idx``; train / validation / test), built with the real ``datasets``;
- ``datasets.load_dataset("Salesforce/wikitext" | "wikitext", ...)``: a few synthetic lines among many empty ones;
- ``transformers.AutoTokenizer.from_pretrained(name)``: a word-level fast tokenizer over the synthetic vocabulary
  (BERT-style pair template for the BERT names, a GPT-style one with an end-of-text token otherwise);
- ``transformers.AutoModelFor{SequenceClassification,CausalLM}.from_pretrained(name)``: a freshly initialised
  tiny BERT / Llama built from a config (2 layers, width 32);
- ``timm.create_model(..., pretrained=True)``: the same architecture, randomly initialised (no weight download).

``evaluate.load("glue", "mrpc")`` (a download of the metric's script) is the module ``evaluate.py`` beside this one.

With ``ANCHOR_TRACE_DIR`` set, every training forward of a stand-in model appends one line to
``$ANCHOR_TRACE_DIR/trace-rank{RANK}.jsonl``: fingerprints of ``input_ids`` and of each of its rows (padding
left out), and its shape. The runner compares
these lines between runs (which batches a resumed run trains on; how batches are padded).
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import json
import os
import random
import sys
from collections.abc import Callable
from typing import Any

WORDS = [f"w{i}" for i in range(48)]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<|endoftext|>"]
SIZES = {"train": 72, "validation": 40, "test": 24}


# ---------------------------------------------------------------------------------------------- datasets
def _sentence(rng: random.Random) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(4, 11))]


def _mrpc_rows(split: str, seed: int) -> dict[str, list[Any]]:
    rng = random.Random(f"mrpc-{split}-{seed}")
    rows: dict[str, list[Any]] = {"sentence1": [], "sentence2": [], "label": [], "idx": []}
    for i in range(SIZES[split]):
        first = _sentence(rng)
        label = i % 2  # balanced classes, so stratified folds work
        second = rng.sample(first, len(first)) if label else _sentence(rng)
        rows["sentence1"].append(" ".join(first))
        rows["sentence2"].append(" ".join(second))
        rows["label"].append(label)
        rows["idx"].append(i)
    return rows


def _wikitext_rows(split: str) -> dict[str, list[Any]]:
    rng = random.Random(f"wikitext-{split}")
    n, filled = (520, 24) if split == "train" else (60, 8)
    lines = [""] * n
    for i in rng.sample(range(n), filled):
        lines[i] = " ".join(_sentence(rng) + _sentence(rng))
    return {"text": lines}


def _patch_datasets(module: Any) -> None:
    real = module.load_dataset

    def load_dataset(path: str, name: str | None = None, *args: Any, **kwargs: Any) -> Any:
        base = path.rsplit("/", 1)[-1]
        if base == "glue" and name == "mrpc":
            return module.DatasetDict({s: module.Dataset.from_dict(_mrpc_rows(s, 0)) for s in SIZES})
        if base == "wikitext":
            return module.DatasetDict({s: module.Dataset.from_dict(_wikitext_rows(s)) for s in ("train", "validation")})
        return real(path, name, *args, **kwargs)

    module.load_dataset = load_dataset


# ---------------------------------------------------------------------------------------------- transformers
def _tokenizer(name: str) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate([*SPECIALS, *WORDS])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if "bert" in name.lower():
        core.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
        return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                       sep_token="[SEP]", mask_token="[MASK]", model_max_length=128)
    return PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", eos_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", model_max_length=128,
                                   model_input_names=["input_ids", "attention_mask"])


def _digest(tensor: Any) -> str:
    return hashlib.sha1(tensor.numpy().tobytes()).hexdigest()[:12]


def _trace(model: Any) -> Any:
    folder = os.environ.get("ANCHOR_TRACE_DIR")
    if not folder:
        return model
    path = os.path.join(folder, f"trace-rank{os.environ.get('RANK', '0')}.jsonl")

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if module.training and ids is not None:
            ids = ids.detach().cpu()
            rows = [_digest(row[row != 0]) for row in ids]  # each sample without its padding
            with open(path, "a") as f:
                f.write(json.dumps({"ids": _digest(ids), "shape": list(ids.shape), "rows": rows}) + "\n")

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return model


def _tiny_model(kind: str, **kwargs: Any) -> Any:
    import transformers

    size = len(SPECIALS) + len(WORDS)
    common = {"vocab_size": size, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 256}
    if kind == "causal":
        config = transformers.LlamaConfig(**common, num_key_value_heads=2, pad_token_id=None,
                                          bos_token_id=SPECIALS.index("<|endoftext|>"),
                                          eos_token_id=SPECIALS.index("<|endoftext|>"))
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.BertConfig(**common, num_labels=int(kwargs.get("num_labels", 2)), pad_token_id=0)
        model = transformers.BertForSequenceClassification(config)
    if "return_dict" in kwargs:
        model.config.return_dict = kwargs["return_dict"]
    return _trace(model)


def _patch_tokenization_auto(module: Any) -> None:
    module.AutoTokenizer.from_pretrained = classmethod(lambda cls, name, *a, **k: _tokenizer(str(name)))


def _patch_modeling_auto(module: Any) -> None:
    module.AutoModelForSequenceClassification.from_pretrained = classmethod(
        lambda cls, name, *a, **k: _tiny_model("classify", **k))
    module.AutoModelForCausalLM.from_pretrained = classmethod(lambda cls, name, *a, **k: _tiny_model("causal", **k))


def _patch_timm(module: Any) -> None:
    real = module.create_model

    def create_model(*args: Any, **kwargs: Any) -> Any:
        kwargs["pretrained"] = False
        return real(*args, **kwargs)

    module.create_model = create_model


# ---------------------------------------------------------------------------------------------- the import hook
_PATCHES: dict[str, Callable[[Any], None]] = {
    "timm": _patch_timm,
    "datasets": _patch_datasets,
    "transformers.models.auto.tokenization_auto": _patch_tokenization_auto,
    "transformers.models.auto.modeling_auto": _patch_modeling_auto,
}


class _PatchAfterImport(importlib.abc.MetaPathFinder):
    """Import the real module, then apply its stand-in patch."""

    def find_spec(self, name: str, path: Any, target: Any = None) -> Any:
        if name not in _PATCHES:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        loader = spec.loader
        run = loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            _PATCHES[name](module)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


sys.meta_path.insert(0, _PatchAfterImport())
