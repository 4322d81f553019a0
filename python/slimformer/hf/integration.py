"""transformers integration: after `import slimformer`,

    AutoModelForCausalLM.from_pretrained(dense_dir, quantization_config=slimformer.GPTQConfig(
        bits=4, group_size=128, dataset=["calibration text", ...], tokenizer=tokenizer))

loads the dense weights as usual and then quantizes the model through slimformer.quantize (GPTQ with the
config's dataset, or RTN with method="rtn"). GPTQ checkpoints (quant_method "gptq" in config.json) belong to
transformers' own GPTQ loader; slimformer.load_pretrained reads them without it."""
from __future__ import annotations

from transformers.quantizers.auto import (AUTO_QUANTIZATION_CONFIG_MAPPING, AUTO_QUANTIZER_MAPPING,
                                          register_quantization_config, register_quantizer)
from transformers.quantizers.base import HfQuantizer

from ..gptq.config import GPTQConfig

METHOD = "slimformer"


class SlimformerHfQuantizer(HfQuantizer):
    """Quantizes a freshly loaded dense model with slimformer (post-training: dense weights load first)."""

    requires_calibration = False

    def validate_environment(self, *args, **kwargs):
        cfg = self.quantization_config
        if cfg.method == "gptq" and cfg.dataset is None:
            raise ValueError("from_pretrained with slimformer.GPTQConfig(method='gptq') needs calibration data: "
                             "GPTQConfig(..., dataset=[texts or model-input dicts], tokenizer=tokenizer), or use "
                             "method='rtn'")
        if self.pre_quantized:
            raise ValueError("this checkpoint is already quantized; load GPTQ checkpoints with "
                             "slimformer.load_pretrained(path)")

    def _process_model_before_weight_loading(self, model, **kwargs):
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        from ..gptq.model import quantize
        cfg = self.quantization_config
        quantize(model, cfg, cfg.dataset, tokenizer=cfg.tokenizer)
        return model

    def is_serializable(self, *args, **kwargs):
        return True  # slimformer.save_pretrained writes the Hub GPTQ layout

    @property
    def is_trainable(self):
        return False


def register():
    """Registers GPTQConfig and the quantizer with transformers under quant_method "slimformer" (idempotent)."""
    if AUTO_QUANTIZATION_CONFIG_MAPPING.get(METHOD) is not GPTQConfig:
        AUTO_QUANTIZATION_CONFIG_MAPPING.pop(METHOD, None)
        register_quantization_config(METHOD)(GPTQConfig)
    if AUTO_QUANTIZER_MAPPING.get(METHOD) is not SlimformerHfQuantizer:
        AUTO_QUANTIZER_MAPPING.pop(METHOD, None)
        register_quantizer(METHOD)(SlimformerHfQuantizer)
