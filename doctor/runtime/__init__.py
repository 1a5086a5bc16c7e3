"""The execution paths a plan can choose beyond transformers' defaults, in one place for both tools.

`niah run` executes them and the doctor's sizing child traces the very same code on the meta device, so
the memory plan follows what runs:
- `attention`: `niah_lean`, an exact prefill attention registered through transformers'
  `AttentionInterface` (flash kernel, bottom-right causal alignment, native GQA; no repeated K/V, no mask);
- `cache`: a DynamicCache whose full-attention layers write into one buffer sized for the prompt (no
  `torch.cat` copy of a layer's whole K/V per chunk), and snapshots of the windowed layers for prefix reuse;
- `experts`: Llama 4's MoE computing only the expert each token was routed to (grouped GEMM).

torch and transformers are imported inside functions: importing this package stays light.
"""
