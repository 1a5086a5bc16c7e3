"""A long-context run script of the kind `doctor --script` reads (it is never imported or run by the doctor).

    doctor --script examples/long_context_test.py

The doctor finds the model id, the 4-bit switch, max_memory, the attention implementation and the
context length below, judges that run, and says which line each setting came from.
"""

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

MODEL_ID = "meta-llama/Llama-4-Scout-17B-16E-Instruct"
USE_4BIT_QUANTIZATION = True
MAX_CONTEXT = 131072

quantization = (
    BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True)
    if USE_4BIT_QUANTIZATION
    else None
)


def main() -> None:
    tokenizer = AutoTokenizer.from_pretrained(MODEL_ID)
    model = AutoModelForCausalLM.from_pretrained(
        MODEL_ID,
        quantization_config=quantization,
        device_map="auto",
        max_memory={0: "75GiB", "cpu": "200GiB"},
        attn_implementation="sdpa",
        dtype=torch.bfloat16,
    )
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "..."}], add_generation_prompt=True, return_tensors="pt"
    )
    print(model.generate(prompt[:, -MAX_CONTEXT:].to(model.device), max_new_tokens=32))


if __name__ == "__main__":
    main()
