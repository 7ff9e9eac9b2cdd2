#!/usr/bin/env python3
"""Checks `serve` with the official `openai` Python package (not part of CI).

    pip install openai
    cargo build -p serve-cli
    python3 tools/check/openai_client.py --serve target/debug/serve --model assets/smollm2-135m-instruct

Starts serve on a free port (reading the announced address from its stdout), then with the
official client: lists models, asks one question without and with streaming (greedy, so both
must give the same text), reads usage from both, asks the same question with chat `logprobs`
/ `top_logprobs`, runs text completions (plain, and `echo` + `logprobs` with `max_tokens` 0
and 1, as lm-evaluation-harness scores a continuation), checks that a bad request raises the
client's BadRequestError / NotFoundError, and stops serve with SIGTERM. Exits non-zero on any
mismatch.
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

        # Chat log-probabilities: one entry per answer token, the tokens spell the answer, and
        # greedy decoding picked the most likely token at every position.
        scored = client.chat.completions.create(
            model="smollm2",
            messages=question,
            temperature=0,
            max_completion_tokens=32,
            logprobs=True,
            top_logprobs=3,
        )
        assert scored.choices[0].message.content == text, scored.choices[0].message.content
        content = scored.choices[0].logprobs.content
        assert "".join(t.token for t in content) == text, [t.token for t in content]
        for token in content:
            assert token.logprob <= 0.0, token
            assert len(token.top_logprobs) == 3, token
            tops = [t.logprob for t in token.top_logprobs]
            assert tops == sorted(tops, reverse=True), tops
            assert token.top_logprobs[0].token == token.token, token
            assert abs(token.top_logprobs[0].logprob - token.logprob) < 1e-5, token
        try:
            client.chat.completions.create(
                model="smollm2", messages=question, logprobs=True, stream=True
            )
            raise AssertionError("logprobs with stream were accepted")
        except openai.BadRequestError as error:
            assert error.body["param"] == "logprobs", error.body

        # Text completions: the prompt as given, no chat template.
        prompt = "The capital of France is"
        completion = client.completions.create(
            model="smollm2", prompt=prompt, max_tokens=8, temperature=0
        )
        assert completion.object == "text_completion", completion.object
        assert completion.choices[0].text, completion
        assert completion.usage.completion_tokens <= 8, completion.usage
        assert completion.choices[0].logprobs is None

        # Scoring a continuation: echo + logprobs, nothing generated.
        sentence = "The capital of France is Paris"
        echoed = client.completions.create(
            model="smollm2", prompt=sentence, max_tokens=0, echo=True, logprobs=1, temperature=0
        )
        choice = echoed.choices[0]
        assert choice.text == sentence, choice.text
        lp = choice.logprobs
        assert "".join(lp.tokens) == sentence, lp.tokens
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None, lp
        assert all(v < 0.0 for v in lp.token_logprobs[1:]), lp.token_logprobs
        assert all(len(top) == 1 for top in lp.top_logprobs[1:]), lp.top_logprobs
        assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset), lp.text_offset
        assert all(sentence[o:].startswith(t) for t, o in zip(lp.tokens, lp.text_offset)), lp
        assert echoed.usage.prompt_tokens == len(lp.tokens), echoed.usage
        paris = lp.token_logprobs[lp.text_offset.index(sentence.index(" Paris"))]
        # lm-evaluation-harness's request shape: one generated token after the echo.
        one_more = client.completions.create(
            model="smollm2", prompt=sentence, max_tokens=1, echo=True, logprobs=1, temperature=0
        )
        more = one_more.choices[0].logprobs
        assert one_more.choices[0].text.startswith(sentence), one_more.choices[0].text
        assert len(more.tokens) == len(lp.tokens) + 1, more.tokens
        assert more.token_logprobs[0] is None, more.token_logprobs
        pairs = zip(more.token_logprobs[1 : len(lp.tokens)], lp.token_logprobs[1:])
        assert all(abs(a - b) < 1e-4 for a, b in pairs), (more, lp)
        assert more.text_offset[-1] == len(sentence), more.text_offset

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

        print(
            f"openai {openai.__version__}: models, chat, stream ({len(pieces)} chunks), usage, "
            f"chat logprobs ({len(content)} tokens), completions, echo + logprobs, errors: ok"
        )
        print(f"answer: {text!r}")
        print(f"completion: {completion.choices[0].text!r}")
        print(f"log P(' Paris' | 'The capital of France is') = {paris:.4f}")
        return 0
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=30)
        if code != 0:
            print(f"serve exited with {code}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
