"""Reference outputs of transformers' CLIPTextModel on the tiny test checkpoint
(tests/golden/tiny_sd15/text_encoder): last_hidden_state, the raw penultimate hidden state
(hidden_states[-2]) and the clip-skip-2 embedding (final_layer_norm of it, as A1111 and sd-scripts
compute it). Variants reuse the same weights with the activation or head count changed in the
config (SD2's text tower uses GELU), computed in float64 and stored as float32."""
import os

import torch
from transformers import CLIPTextConfig, CLIPTextModel

from goldenlib import Golden

HERE = os.path.dirname(os.path.abspath(__file__))
TE = os.path.join(HERE, "..", "golden", "tiny_sd15", "text_encoder")

base = CLIPTextModel.from_pretrained(TE, torch_dtype=torch.float32)
state = base.state_dict()
g = Golden("clip", seed=7)

ids = torch.randint(0, 998, (2, 77))
ids[:, 0] = 998
ids[0, 10] = 999
ids[0, 11:] = 999          # SD1 pads with EOS
ids[1, 76] = 999

for case, act, heads in [("quick_gelu_h1", "quick_gelu", 1), ("gelu_h4", "gelu", 4)]:
    cfg = CLIPTextConfig.from_pretrained(TE)
    cfg.hidden_act = act
    cfg.num_attention_heads = heads
    cfg._attn_implementation = "eager"
    m = CLIPTextModel(cfg)
    m.load_state_dict(state)
    m = m.double().eval()
    with torch.no_grad():
        out = m(input_ids=ids, output_hidden_states=True)
        pen = out.hidden_states[-2]
        g.add(case, "input_ids", ids.to(torch.int64))
        g.add(case, "last_hidden_state", out.last_hidden_state)
        g.add(case, "penultimate_hidden_state", pen)
        g.add(case, "clip_skip2", getattr(m, "text_model", m).final_layer_norm(pen))
g.save()
