"""ctransformers as a peer runtime: logits for a token sequence, one token at a time."""
import numpy as np


def ctransformers_logits(path, tokens, n_ctx=64):
    from ctransformers import AutoModelForCausalLM
    llm = AutoModelForCausalLM.from_pretrained(path, model_type="llama", context_length=n_ctx, threads=1,
                                               batch_size=1, gpu_layers=0)
    out = []
    for t in tokens:
        llm.eval([int(t)], batch_size=1, threads=1)
        out.append(np.array(llm.logits, dtype=np.float32))
    return np.stack(out)
