"""Conformance of the default parameter rule with Hugging Face transformers.

Tiny models (hidden size 32, two layers, or the smallest the config allows) are built from their config classes with random
weights (nothing is downloaded), and ``tp.select`` is compared with the rule Hugging
Face's ``Trainer`` applies, ``Trainer.get_decay_parameter_names``, called on the real
transformers code (it does not use the Trainer's state, so no Trainer is built).
Decisions are compared per tensor (tied names count once); both are printed side by side
(``pytest -s``). Every difference must be listed in ``DOCUMENTED`` with its reason, and
every entry there must still be needed. ``python tests/oracles/test_conformance.py``
prints the conformance table.

timm and torchvision are not compared here: torchvision from PyPI does not import beside
the CPU build of torch we pin ("operator torchvision::nms does not exist"), and timm
imports torchvision.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch
import transformers
from torch import nn
from transformers import Trainer

import torchpenalty as tp

TEXT = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}  # fmt: skip
IMAGE = {"image_size": 32, "patch_size": 8, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}  # fmt: skip
DECODER = {**TEXT, "num_key_value_heads": 2}
SWIN = {"image_size": 32, "patch_size": 4, "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2], "window_size": 4}  # fmt: skip

# model_type for AutoConfig.for_model -> (model class, config keyword arguments)
MODELS: dict[str, tuple[str, dict]] = {
    "bert": ("BertForMaskedLM", TEXT),
    "distilbert": ("DistilBertForMaskedLM", {"vocab_size": 99, "dim": 32, "n_layers": 2, "n_heads": 4, "hidden_dim": 37}),
    "deberta-v2": ("DebertaV2ForMaskedLM", {**TEXT, "relative_attention": True, "position_biased_input": False, "pos_att_type": ["p2c", "c2p"]}),
    "gpt2": ("GPT2LMHeadModel", {"vocab_size": 99, "n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, "bos_token_id": 0, "eos_token_id": 0}),
    "llama": ("LlamaForCausalLM", DECODER),
    "gemma": ("GemmaForCausalLM", {**DECODER, "head_dim": 8}),
    "qwen2": ("Qwen2ForCausalLM", DECODER),
    "t5": ("T5ForConditionalGeneration", {"vocab_size": 99, "d_model": 32, "d_kv": 8, "d_ff": 37, "num_layers": 2, "num_heads": 4}),
    "bart": ("BartForConditionalGeneration", {"vocab_size": 99, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 37, "decoder_ffn_dim": 37}),
    "mamba": ("MambaForCausalLM", {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "state_size": 4, "expand": 2, "conv_kernel": 4}),
    "vit": ("ViTForImageClassification", IMAGE),
    "dinov2": ("Dinov2Model", IMAGE),
    "beit": ("BeitForImageClassification", {**IMAGE, "use_relative_position_bias": True, "layer_scale_init_value": 0.1}),
    "swin": ("SwinForImageClassification", SWIN),
    "swinv2": ("Swinv2ForImageClassification", SWIN),
    "levit": ("LevitForImageClassification", {"image_size": 64, "hidden_sizes": [16, 24, 32], "num_attention_heads": [1, 2, 2], "depths": [1, 1, 1], "key_dim": [8, 8, 8], "patch_size": 16, "stride": 2}),
    "convnext": ("ConvNextForImageClassification", {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2, "image_size": 32}),
    "mobilevit": ("MobileViTForImageClassification", {"image_size": 32, "patch_size": 2, "hidden_sizes": [16, 16, 16], "neck_hidden_sizes": [8, 8, 8, 8, 8, 16, 32], "num_attention_heads": 2}),
    "clip": ("CLIPModel", {"text_config": {**TEXT, "bos_token_id": 0, "eos_token_id": 1}, "vision_config": IMAGE, "projection_dim": 16}),
    "wav2vec2": ("Wav2Vec2ForCTC", {**TEXT, "vocab_size": 32, "conv_dim": (8, 8), "conv_stride": (4, 4), "conv_kernel": (8, 8), "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2}),
    "roberta": ("RobertaForMaskedLM", TEXT),
    "albert": ("AlbertForMaskedLM", {**TEXT, "embedding_size": 16}),
    "electra": ("ElectraForPreTraining", {**TEXT, "embedding_size": 16}),
    "opt": ("OPTForCausalLM", {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "ffn_dim": 37, "word_embed_proj_dim": 32}),
    "gpt_neox": ("GPTNeoXForCausalLM", TEXT),
    "falcon": ("FalconForCausalLM", {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}),
    "phi": ("PhiForCausalLM", TEXT),
    "bloom": ("BloomForCausalLM", {"vocab_size": 99, "hidden_size": 32, "n_layer": 2, "n_head": 4}),
    "mistral": ("MistralForCausalLM", DECODER),
    "mamba2": ("Mamba2ForCausalLM", {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "state_size": 4, "expand": 2, "num_heads": 4, "head_dim": 16, "n_groups": 1, "conv_kernel": 4}),
    "whisper": ("WhisperForConditionalGeneration", {"vocab_size": 99, "d_model": 32, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4, "decoder_attention_heads": 4, "encoder_ffn_dim": 37, "decoder_ffn_dim": 37, "num_mel_bins": 8, "max_source_positions": 16, "max_target_positions": 16, "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 1, "decoder_start_token_id": 0}),
    "deit": ("DeiTForImageClassificationWithTeacher", IMAGE),
    "vivit": ("VivitForVideoClassification", {"image_size": 16, "num_frames": 4, "tubelet_size": [2, 4, 4], "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 37}),
    "segformer": ("SegformerForSemanticSegmentation", {"num_encoder_blocks": 2, "depths": [1, 1], "sr_ratios": [2, 1], "hidden_sizes": [8, 16], "num_attention_heads": [1, 2], "decoder_hidden_size": 16, "patch_sizes": [7, 3], "strides": [4, 2], "mlp_ratios": [2, 2]}),
    "convnextv2": ("ConvNextV2ForImageClassification", {"hidden_sizes": [8, 16], "depths": [1, 1], "num_stages": 2}),
    "resnet": ("ResNetForImageClassification", {"embedding_size": 8, "hidden_sizes": [8, 16], "depths": [1, 1]}),
    "mobilenet_v2": ("MobileNetV2ForImageClassification", {"image_size": 32, "depth_multiplier": 0.25}),
    "siglip": ("SiglipModel", {"text_config": {**TEXT, "bos_token_id": 0, "eos_token_id": 1}, "vision_config": IMAGE}),
}  # fmt: skip


@dataclass(frozen=True)
class Documented:
    """A difference we keep: on ``models``, parameters whose name matches ``pattern``
    are regularized by us iff ``ours`` (and by Hugging Face iff not ``ours``)."""

    models: tuple[str, ...]
    pattern: str
    ours: bool
    label: str  # short, for the table
    reason: str


DOCUMENTED = [
    Documented(("beit", "dinov2", "convnext"), r"(lambda_?[12]|layer_scale_parameter)$", False, "layer-scale gammas (1-D)",
               "1-D layer-scale gamma, a per-channel scale: skipped like every ndim < 2 parameter "
               "(timm's rule skips it too); HF decays it because its name has neither 'bias' nor 'norm'"),
    Documented(("clip", "siglip"), r"^logit_scale$", False, "logit_scale (0-D or 1-D)",
               "softmax temperature (0-D in CLIP, shape (1,) in SigLIP): decaying it pulls the "
               "logit scale to 1 (OpenCLIP and timm skip it); HF decays it"),
    Documented(("clip", "wav2vec2"), r"(class_embedding|masked_spec_embed)$", False, "learned token (1-D)",
               "1-D learned token (class token, mask embedding): ndim < 2, skipped as timm does; "
               "HF decays it"),
    Documented(("mamba", "mamba2"), r"mixer\.D$", False, "Mamba D (1-D)",
               "Mamba's 1-D skip parameter D: mamba_ssm marks it _no_weight_decay (which we "
               "honour; it is 1-D anyway); HF's port drops the mark and decays it"),
    Documented(("mamba2",), r"mixer\.A_log$", False, "Mamba-2 A_log (1-D)",
               "Mamba-2's A_log has one entry per head (1-D): skipped as ndim < 2; mamba_ssm "
               "marks it _no_weight_decay; HF decays it (HF's Mamba-1 A_log is 2-D: both decay it)"),
    Documented(("mamba", "mamba2"), r"norm_f\.weight$", False, "norm_f (Mamba RMSNorm)",
               "Mamba(2)RMSNorm scale, a normalization module by its class name; HF's name patterns "
               "('norm', '_norm', 'layernorm', 'rmsnorm' as segments) miss 'norm_f'"),
    Documented(("mobilevit", "resnet", "mobilenet_v2"), r"\.normalization\.weight$", False, "BatchNorm2d scales",
               "BatchNorm2d scale: HF recognises only nn.LayerNorm by type, and the name "
               "'normalization' matches none of its patterns"),
    Documented(("swinv2",), r"continuous_position_bias_mlp\.\d+\.weight$", True, "bias-generating MLP weights",
               "weights of the MLP that computes the relative-position bias: ordinary Linear "
               "weights, and no name of their own says bias; HF skips them because 'bias' occurs "
               "anywhere in the path. Swin V2's authors skip them through "
               "no_weight_decay_keywords(), which we honour where a model defines it (HF's port does not)"),
]  # fmt: skip


def build(model_type: str) -> nn.Module:
    cls_name, kwargs = MODELS[model_type]
    config = transformers.AutoConfig.for_model(model_type, **kwargs)
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(config)


@dataclass
class Row:
    name: str  # our (visible) name, the first of tied names
    shape: tuple[int, ...]
    ours: bool
    hf: bool
    reason: str  # our explain() reason
    note: str = ""  # the documented difference's reason, or "UNDOCUMENTED"


def compare(model_type: str, model: nn.Module) -> list[Row]:
    """One row per trainable tensor: our decision and Hugging Face's."""
    hf_names = Trainer.get_decay_parameter_names(None, model)
    raw = dict(model.named_parameters(remove_duplicate=False))
    hf_ids = {id(raw[n]) for n in hf_names if n in raw}  # HF also lists None slots (MHA)
    ours = {id(p) for _, p in tp.select(model)}
    reasons = {r.name: r.reason for r in tp.explain(model)}
    rows = []
    for name, p in tp.select(model, include="*"):  # every trainable tensor, once
        row = Row(name, tuple(p.shape), id(p) in ours, id(p) in hf_ids, reasons[name])
        if row.ours != row.hf:
            doc = [d for d in DOCUMENTED if model_type in d.models and re.search(d.pattern, name)]
            row.note = doc[0].reason if doc and doc[0].ours == row.ours else "UNDOCUMENTED"
        rows.append(row)
    return rows


def side_by_side(model_type: str, rows: list[Row]) -> str:
    yn = {True: "yes", False: "no"}
    lines = [
        f"== {model_type}",
        f"{'name':70s} {'shape':16s} ours hf   reason / documented difference",
    ]
    for r in rows:
        why = r.reason + (f"  <-- {r.note}" if r.note else "")
        lines.append(f"{r.name:70s} {r.shape!s:16s} {yn[r.ours]:4s} {yn[r.hf]:4s} {why}")
    return "\n".join(lines)


@pytest.mark.parametrize("model_type", list(MODELS))
def test_select_agrees_with_hugging_face_or_documents_why(model_type):
    model = build(model_type)
    rows = compare(model_type, model)
    print(side_by_side(model_type, rows))
    undocumented = [(r.name, r.ours, r.hf) for r in rows if r.note == "UNDOCUMENTED"]
    assert undocumented == []
    # every documented difference for this model still occurs
    for d in DOCUMENTED:
        if model_type in d.models:
            hit = [r for r in rows if re.search(d.pattern, r.name)]
            assert hit and all(r.ours == d.ours and r.hf != d.ours for r in hit), d.pattern
    # every trainable tensor compared once (HF's Trainer drops frozen ones later, as we do)
    assert len(rows) == len({id(p) for p in model.parameters() if p.requires_grad})


def test_documented_differences_name_known_models():
    assert {m for d in DOCUMENTED for m in d.models} <= set(MODELS)


@pytest.mark.parametrize(
    ("model_type", "name", "reason"),
    [
        ("swin", "swin.encoder.layers.0.blocks.0.attention.relative_position_bias.relative_position_bias_table", "bias by its name ('relative_position_bias_table'), whatever its shape"),
        ("beit", "beit.layers.0.relative_position_bias.relative_position_bias_table", "bias by its name ('relative_position_bias_table'), whatever its shape"),
        ("levit", "levit.encoder.stages.0.layers.2.attention_biases", "bias by its name ('attention_biases'), whatever its shape"),
        ("t5", "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight", "bias by its module's name ('relative_attention_bias'), whatever its shape"),
        ("gpt2", "lm_head.weight", "tied to 'transformer.wte.weight' (counted once)"),
        ("llama", "model.layers.0.input_layernorm.weight", "normalization module (LlamaRMSNorm)"),
        ("t5", "encoder.block.0.layer.0.layer_norm.weight", "normalization module (T5LayerNorm)"),
    ],
)  # fmt: skip
def test_reasons_on_real_architectures(model_type, name, reason):
    rows = {r.name: r for r in tp.explain(build(model_type))}
    assert rows[name].reason == reason
    assert not rows[name].regularized


def conformance_table() -> str:
    """Markdown table: model, tensors, agreement with HF, documented differences."""
    lines = [
        "| model | parameter tensors | elements | agreement with HF | documented differences |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for model_type in MODELS:
        model = build(model_type)
        rows = compare(model_type, model)
        diff = [r for r in rows if r.ours != r.hf]
        numel = sum(p.numel() for p in model.parameters())
        counts: dict[str, int] = {}
        for r in diff:
            doc = [
                d.label
                for d in DOCUMENTED
                if model_type in d.models and re.search(d.pattern, r.name)
            ]
            label = doc[0] if doc and r.note != "UNDOCUMENTED" else f"UNDOCUMENTED {r.name}"
            counts[label] = counts.get(label, 0) + 1
        text = "; ".join(f"{label} x{n}" for label, n in counts.items())
        agree = 100 * (len(rows) - len(diff)) / len(rows)
        lines.append(f"| {model_type} | {len(rows)} | {numel} | {agree:.1f}% | {text or '-'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    print(conformance_table())
