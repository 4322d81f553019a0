"""Tiny Hugging Face models built from configs (no hub): one per architecture family quantize() supports."""
import torch
import transformers as T

VOCAB = 256


def _silence(cfg):
    cfg.bos_token_id = cfg.eos_token_id = cfg.pad_token_id = None
    return cfg


def tiny(arch: str, layers: int = 2, hidden: int = 128, **kw):
    inter = kw.pop("intermediate", 2 * hidden)
    llama_like = {"llama": (T.LlamaConfig, T.LlamaForCausalLM, {}),
                  "mistral": (T.MistralConfig, T.MistralForCausalLM, {"head_dim": hidden // 4}),
                  "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, {})}
    if arch in llama_like:
        config_cls, model_cls, extra = llama_like[arch]
        cfg = config_cls(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, **extra, **kw)
        model = model_cls(_silence(cfg))
    elif arch == "opt":
        cfg = T.OPTConfig(vocab_size=VOCAB, hidden_size=hidden, ffn_dim=inter, num_hidden_layers=layers,
                          num_attention_heads=4, word_embed_proj_dim=hidden, **kw)
        model = T.OPTForCausalLM(_silence(cfg))
    elif arch == "gpt2":
        cfg = T.GPT2Config(vocab_size=VOCAB, n_embd=hidden, n_layer=layers, n_head=4, **kw)
        model = T.GPT2LMHeadModel(_silence(cfg))
    elif arch == "bert":
        cfg = T.BertConfig(vocab_size=VOCAB, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                           num_attention_heads=4, **kw)
        model = T.BertModel(_silence(cfg))
    elif arch == "vit":
        cfg = T.ViTConfig(hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers, num_attention_heads=4,
                          image_size=32, patch_size=8, **kw)
        model = T.ViTModel(cfg)
    else:
        raise ValueError(arch)
    return model.eval()


def inputs(arch: str, n: int, length: int = 48, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    if arch == "vit":
        return [{"pixel_values": torch.randn(1, 3, 32, 32, generator=g)} for _ in range(n)]
    return [{"input_ids": torch.randint(0, VOCAB, (1, length), generator=g)} for _ in range(n)]


def output(model, batch):
    out = model(**batch)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state
