#!/usr/bin/env python3
"""Checks `serve` with the official `openai` Python package (not part of CI).

    pip install openai
    cargo build -p serve-cli
    python3 tools/check/openai_client.py --serve target/debug/serve --model assets/smollm2-135m-instruct

Starts serve on a free port (reading the announced address from its stdout), then with the
official client: lists models, asks one question without and with streaming (greedy, so both
must give the same text), reads usage from both, checks that a bad request raises the client's
BadRequestError / NotFoundError, and stops serve with SIGTERM. Exits non-zero on any mismatch.
"""

import argparse
import signal
import subprocess
import sys

import openai


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", required=True, help="path to the serve binary")
    parser.add_argument("--model", required=True, help="model directory or .gguf")
    args = parser.parse_args()

    process = subprocess.Popen(
        [args.serve, "--model", args.model, "--port", "0", "--model-name", "smollm2"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline()
        if not line.startswith("listening on "):
            print(f"serve did not announce its address: {line!r}", file=sys.stderr)
            return 1
        base_url = line.removeprefix("listening on ").strip() + "/v1"
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)

        models = [m.id for m in client.models.list()]
        assert models == ["smollm2"], models

        question = [{"role": "user", "content": "What is the capital of France?"}]
        plain = client.chat.completions.create(
            model="smollm2", messages=question, temperature=0, max_completion_tokens=32
        )
        text = plain.choices[0].message.content
        assert "Paris" in text, text
        assert plain.choices[0].finish_reason == "stop", plain.choices[0].finish_reason
        assert plain.usage.total_tokens == plain.usage.prompt_tokens + plain.usage.completion_tokens

        pieces, finish, usage = [], None, None
        stream = client.chat.completions.create(
            model="smollm2",
            messages=question,
            temperature=0,
            max_completion_tokens=32,
            stream=True,
            stream_options={"include_usage": True},
        )
        for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                if choice.delta.content:
                    pieces.append(choice.delta.content)
                if choice.finish_reason:
                    finish = choice.finish_reason
        streamed = "".join(pieces)
        assert streamed == text, (streamed, text)
        assert finish == "stop", finish
        assert usage is not None and usage.completion_tokens == plain.usage.completion_tokens, usage

        try:
            client.chat.completions.create(model="smollm2", messages=question, n=2)
            raise AssertionError("n=2 was accepted")
        except openai.BadRequestError as error:
            assert error.body["param"] == "n", error.body
        try:
            client.chat.completions.create(model="gpt-4o", messages=question)
            raise AssertionError("an unknown model was accepted")
        except openai.NotFoundError as error:
            assert error.body["code"] == "model_not_found", error.body

        print(f"openai {openai.__version__}: models, chat, stream ({len(pieces)} chunks), usage, errors: ok")
        print(f"answer: {text!r}")
        return 0
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        if code != 0:
            print(f"serve exited with {code}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
