"""Build the demo assets deterministically: the tiny-llama model and small datasets per stage.

Run with the project's venv: `python tools/make_demo.py [--home DIR]`. It writes
`<home>/models/tiny-llama/` and its twin `tiny-llama-hd64/` for vLLM (each a 2-layer
LlamaForCausalLM with a byte-level BPE tokenizer that has the special tokens of LLaMA Factory's
default, llama3 and qwen templates) and `<home>/data/` (demo data and its dataset_info.json).
Nothing is downloaded. Rerunning it rebuilds the same files.
"""

import argparse
import json
import os
import random
import shutil

MODEL_NAME = "tiny-llama"
# Its twin that vLLM's CPU attention serves (it refuses tiny-llama's head_dim of 16): head_dim 64,
# the same tokenizer. Shared base-model servers (imts_flask/serving/) run on it in the tests.
SERVE_MODEL_NAME = "tiny-llama-hd64"
SHAPES = {
    MODEL_NAME: {
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    },
    SERVE_MODEL_NAME: {
        "hidden_size": 128,
        "intermediate_size": 256,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
    },
}
SPECIAL_TOKENS = {"bos": "<s>", "eos": "</s>", "unk": "<unk>", "pad": "<pad>"}
# Tokens LLaMA Factory's templates insert: llama3 and qwen (the default template uses eos only).
TEMPLATE_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
]

_NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
_COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple"]
_THINGS = ["apple", "river", "cloud", "engine", "garden", "letter", "window", "bridge"]


def _sft_examples(rng, n):
    examples = []
    for i in range(n):
        a, b = rng.randint(0, 5), rng.randint(0, 5)
        kind = i % 3
        if kind == 0:
            examples.append(
                {
                    "instruction": f"Add {_NUMBERS[a]} and {_NUMBERS[b]}.",
                    "input": "",
                    "output": f"{_NUMBERS[a]} plus {_NUMBERS[b]} is {_NUMBERS[a + b]}.",
                }
            )
        elif kind == 1:
            colour, thing = rng.choice(_COLOURS), rng.choice(_THINGS)
            examples.append(
                {
                    "instruction": "Describe the object in one sentence.",
                    "input": f"a {colour} {thing}",
                    "output": f"It is a {thing} and its colour is {colour}.",
                }
            )
        else:
            word = rng.choice(_THINGS)
            examples.append({"instruction": "Spell the word backwards.", "input": word, "output": word[::-1]})
    return examples


def build_datasets(data_dir, seed=0):
    """Write demo datasets for sft, pt, rm/dpo and kto plus their dataset_info.json."""
    rng = random.Random(seed)
    os.makedirs(data_dir, exist_ok=True)
    sft = _sft_examples(rng, 120)
    pt = [
        {
            "text": f"The {rng.choice(_COLOURS)} {rng.choice(_THINGS)} stands near the "
            f"{rng.choice(_THINGS)}. Count: {' '.join(_NUMBERS[: rng.randint(2, 10)])}."
        }
        for _ in range(80)
    ]
    pref = [
        {
            "instruction": e["instruction"],
            "input": e["input"],
            "chosen": e["output"],
            "rejected": "I do not know.",
        }
        for e in _sft_examples(rng, 60)
    ]
    kto = []
    for i, e in enumerate(_sft_examples(rng, 60)):
        good = i % 2 == 0
        kto.append(
            {
                "messages": [
                    {"role": "user", "content": f"{e['instruction']} {e['input']}".strip()},
                    {"role": "assistant", "content": e["output"] if good else "No idea."},
                ],
                "label": good,
            }
        )
    files = {"demo_sft.json": sft, "demo_pt.json": pt, "demo_pref.json": pref, "demo_kto.json": kto}
    for name, rows in files.items():
        with open(os.path.join(data_dir, name), "w", encoding="utf-8") as handle:
            json.dump(rows, handle, indent=1, ensure_ascii=False)
    info = {
        "demo_sft": {"file_name": "demo_sft.json"},
        "demo_pt": {"file_name": "demo_pt.json", "columns": {"prompt": "text"}},
        "demo_pref": {
            "file_name": "demo_pref.json",
            "ranking": True,
            "columns": {
                "prompt": "instruction",
                "query": "input",
                "chosen": "chosen",
                "rejected": "rejected",
            },
        },
        "demo_kto": {
            "file_name": "demo_kto.json",
            "formatting": "sharegpt",
            "columns": {"messages": "messages", "kto_tag": "label"},
            "tags": {
                "role_tag": "role",
                "content_tag": "content",
                "user_tag": "user",
                "assistant_tag": "assistant",
            },
        },
    }
    with open(os.path.join(data_dir, "dataset_info.json"), "w", encoding="utf-8") as handle:
        json.dump(info, handle, indent=2)
    corpus = [json.dumps(rows, ensure_ascii=False) for rows in files.values()]
    return corpus


def build_model(model_dir, corpus, seed=0, shape=SHAPES[MODEL_NAME]):
    """Train a byte-level BPE tokenizer on `corpus` and save a randomly initialised tiny Llama."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values()) + TEMPLATE_TOKENS
    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        unk_token=SPECIAL_TOKENS["unk"],
        pad_token=SPECIAL_TOKENS["pad"],
        additional_special_tokens=TEMPLATE_TOKENS,
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_hidden_layers=2,
        **shape,
        max_position_embeddings=4096,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    shutil.rmtree(model_dir, ignore_errors=True)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--home",
        default=os.environ.get("IMTS_HOME", os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    parser.add_argument("--force", action="store_true", help="rebuild the model even if it exists")
    args = parser.parse_args()
    corpus = build_datasets(os.path.join(args.home, "data"))
    for name, shape in SHAPES.items():
        model_dir = os.path.join(args.home, "models", name)
        if args.force or not os.path.exists(os.path.join(model_dir, "model.safetensors")):
            build_model(model_dir, corpus, shape=shape)
            print(f"built {model_dir}")
        else:
            print(f"{model_dir} exists (use --force to rebuild)")
    print(f"wrote demo datasets to {os.path.join(args.home, 'data')}")


if __name__ == "__main__":
    main()
