"""What the routes do: chat, completions, embeddings and the model list, with no HTTP in sight.

A generation request goes through these steps, each of which can refuse it with an OpenAI error:

    unsupported fields → 400        the model table → 404 / 400 (adapter on an engine without adapters)
    chat template + tokenize → prompt tokens; prompt + max_tokens over the context → 400 context_length_exceeded
    tokens per minute → 429         a generation slot (queue full → 503)
    engine.submit → UnsupportedFeature → 400
    consume: pieces → response (or SSE chunks); timeout → 503; client gone → the generations are cancelled

`Run` holds one request's generations and every resource it took (tokens reserved, slot, adapter lease);
`Run.close()` gives them all back, cancels what still runs, and is called on every path, stream or not.

Sampling defaults are OpenAI's (temperature 1, top_p 1), not the engines' greedy default, since OpenAI clients
rely on them; send `temperature: 0` for greedy decoding.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from pydantic import BaseModel

from llmkit.engines import Generation, GenParams, Piece, UnsupportedFeature, UpstreamError
from llmkit.serve import protocol as p
from llmkit.serve import rag, recording, tools
from llmkit.serve.errors import APIError, bug
from llmkit.serve.guarding import GuardedStream, Replies, check_input, refuse_logprobs
from llmkit.serve.models import Lease, Served
from llmkit.serve.state import ServerState

log_ = logging.getLogger("llmkit.serve")

DEFAULT_MAX_TOKENS = 1024  # with no max_tokens: what is left of the context, at most this
POLL_S = 0.25  # how often a non-streaming request checks that its client is still connected


@dataclass
class Context:
    """What the route knows of the HTTP request that serving needs."""

    client: str  # the identity rate limits count against: an API key's hash or the client's IP
    is_disconnected: Callable[[], Awaitable[bool]] | None = None  # polled by non-streaming requests
    started: float = field(default_factory=time.perf_counter)


@dataclass
class Stream:
    """A streaming answer: SSE lines, and the cleanup the response must call however the stream ends."""

    body: AsyncIterator[str]
    close: Callable[[], None]


class ClientGone(APIError):
    def __init__(self) -> None:
        super().__init__(499, "client closed the request", code="client_closed_request")


def refuse_unsupported(req: p.Sampling) -> None:
    for param, why in req.unsupported():
        raise APIError(400, why, param=param, code="unsupported_parameter")


def fingerprint(state: ServerState, served: Served) -> str | None:
    """system_fingerprint: llmkit's version and engine, and the registry version that answered (it changes when
    the server follows its alias to a new version, as OpenAI's changes with the backend)."""
    if served.version is None or state.fingerprint is None:
        return state.fingerprint
    return f"{state.fingerprint}-v{served.version}"


def sse(obj: BaseModel | dict) -> str:
    data = obj.model_dump_json() if isinstance(obj, BaseModel) else json.dumps(obj)
    return f"data: {data}\n\n"


# ---------------------------------------------------------------------------------------------------------
# One request's generations


@dataclass
class Job:
    prompt: str | list[int]  # text, or token ids (the completions API takes both)
    prompt_tokens: int
    params: GenParams


class Run:
    def __init__(self, state: ServerState, served: Served, route: str, ctx: Context):
        self.state, self.served, self.route, self.ctx = state, served, route, ctx
        self.jobs: list[Job] = []
        self.gens: list[Generation] = []
        self.closed = False
        self.cancel_reason: str | None = None
        self._reserved = 0
        self._tasks: list[asyncio.Task] = []
        self._cleanups: list[Callable[[], None]] = [lambda: state.models.release(served)]
        self.ttft: float | None = None  # seconds from the request to its first generated text
        self._it: AsyncIterator | None = None  # the events, once started (`peek`)
        self._peeked: list[tuple[int, Piece | None]] = []

    @property
    def remote(self) -> bool:
        """An upstream engine (engines/upstream.py): no local tokenizer; the upstream checks the context."""
        return getattr(self.served.slot.engine, "remote", False)

    async def prepare(self, prompts: list[str | list[int]], max_tokens: int | None,
                      param: str) -> list[tuple[str | list[int], int, int]]:
        """(prompt, prompt tokens, max_tokens) of each prompt, checked against the context length."""
        slot = self.served.slot
        if self.remote:  # prompt tokens unknown until the upstream reports them (Run.usage)
            return [(x, 0, DEFAULT_MAX_TOKENS if max_tokens is None else max_tokens) for x in prompts]
        counts = await slot.call(lambda: [len(x) if isinstance(x, list) else len(slot.engine.tokenize(x))
                                          for x in prompts])
        out = []
        for prompt, n in zip(prompts, counts):
            room = slot.n_ctx - n
            if max_tokens is None and room < 1 or max_tokens is not None and max_tokens > room:
                asked = f" + {max_tokens} max_tokens" if max_tokens is not None else ""
                raise APIError(400, f"This model's maximum context length is {slot.n_ctx} tokens. However, you "
                                    f"requested {n + (max_tokens or 0)} tokens ({n} in the {param}{asked}). "
                                    f"Please reduce the length of the {param} or max_tokens.",
                               param=param, code="context_length_exceeded")
            out.append((prompt, n, max_tokens if max_tokens is not None else min(room, DEFAULT_MAX_TOKENS)))
        return out

    async def start(self, jobs: list[Job]) -> None:
        """Reserve tokens, take a generation slot and submit every job to the engine."""
        st = self.state
        self.jobs = jobs
        self._reserved = st.limiter.reserve(self.ctx.client, sum(j.prompt_tokens + j.params.max_tokens for j in jobs))
        self._cleanups.append(self._refund)
        await st.slots.acquire()
        self._cleanups.append(st.slots.release)
        engine, adapter = self.served.slot.engine, self.served.adapter

        def submit_all() -> list[Generation]:
            gens: list[Generation] = []
            try:
                for job in jobs:
                    gens.append(engine.submit(job.prompt, job.params, adapter=adapter))
            except BaseException:
                for g in gens:
                    g.cancel()
                raise
            return gens

        self.gens = await self.served.slot.call(submit_all)

    def _refund(self) -> None:
        if self._reserved:
            # an upstream engine's prompt tokens are known only once it reported them (j.prompt_tokens is 0)
            used = (sum(j.prompt_tokens or g.prompt_tokens for j, g in zip(self.jobs, self.gens))
                    + sum(j.prompt_tokens for j in self.jobs[len(self.gens):])
                    + sum(g.completion_tokens for g in self.gens))
            self.state.limiter.refund(self.ctx.client, self._reserved - used)

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None:
            self.cancel_reason = reason
            self.state.metrics.cancelled.labels(reason).inc()
        for g in self.gens:
            g.cancel()

    async def peek(self) -> None:
        """Wait for the first event, so that an upstream's refusal is the response's HTTP status rather than an
        error event inside a 200 stream (streams send their headers before their first chunk)."""
        self._it = self._events()
        try:
            self._peeked.append(await anext(self._it))
        except StopAsyncIteration:
            pass

    async def events(self) -> AsyncIterator[tuple[int, Piece | None]]:
        """(choice index, piece) as the engine makes them, and (index, None) when that choice is finished.
        Raises APIError 503 at the request timeout and ClientGone when a polled client disconnected."""
        if self._it is None:
            self._it = self._events()
        while self._peeked:
            yield self._peeked.pop(0)
        async for event in self._it:
            yield event

    async def _events(self) -> AsyncIterator[tuple[int, Piece | None]]:
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, gen: Generation) -> None:
            try:
                async for piece in gen:
                    queue.put_nowait((i, piece))
                queue.put_nowait((i, None))
            except Exception as e:  # noqa: BLE001 -- an engine failure: re-raised below, in the request's task
                queue.put_nowait((i, e))

        self._tasks = [asyncio.create_task(pump(i, g)) for i, g in enumerate(self.gens)]
        deadline = self.ctx.started + self.state.cfg.request_timeout_s
        poll = self.ctx.is_disconnected
        running = len(self.gens)
        while running:
            left = deadline - time.perf_counter()
            if left <= 0:
                self.cancel("timeout")
                raise APIError(503, f"the request took longer than {self.state.cfg.request_timeout_s:g} s and was "
                                    "cancelled", code="timeout", headers={"Retry-After": "1"})
            try:
                i, item = await asyncio.wait_for(queue.get(), min(left, POLL_S) if poll else left)
            except TimeoutError:
                if poll is not None and await poll():
                    self.cancel("disconnect")
                    raise ClientGone() from None
                continue
            if isinstance(item, UpstreamError):  # the upstream's status and message, in our envelope
                raise APIError(item.http_status, str(item), code=item.code, param=item.param, type=item.type)
            if isinstance(item, Exception):
                raise item
            if item is None:
                running -= 1
            elif self.ttft is None and item.text:
                self.ttft = time.perf_counter() - self.ctx.started
                self.state.metrics.ttft.labels(self.route).observe(self.ttft)
            yield i, item

    def finish_reason(self, i: int) -> str:
        return "length" if self.gens[i].finish_reason == "length" else "stop"

    def usage(self) -> p.Usage:
        seen: dict[str, int] = {}  # n choices of one prompt count its tokens once, as OpenAI does
        for k, j in enumerate(self.jobs):
            # an upstream engine's prompt tokens are the count its upstream reported
            n = j.prompt_tokens or (self.gens[k].prompt_tokens if k < len(self.gens) else 0)
            seen[j.prompt if isinstance(j.prompt, str) else tuple(j.prompt)] = n
        return p.Usage.of(sum(seen.values()), sum(g.completion_tokens for g in self.gens))

    def close(self) -> None:
        """Cancel what still runs, give back every resource, count the tokens. Safe to call twice."""
        if self.closed:
            return
        self.closed = True
        if any(g.finish_reason is None for g in self.gens):
            self.cancel("disconnect")  # nothing consumes these any more: the client went away mid-stream
        for t in self._tasks:
            t.cancel()
        if self.gens:
            u = self.usage()
            self.state.metrics.prompt_tokens.inc(u.prompt_tokens)
            self.state.metrics.completion_tokens.inc(u.completion_tokens)
        for fn in reversed(self._cleanups):
            try:
                fn()
            except Exception:  # one failed cleanup must not keep the others from running
                log_.exception("cleanup of a request failed")


def gen_params(req: p.Sampling, max_tokens: int, i: int, logprobs: int | None = None,
               response_format: dict | None = None, prompt_logprobs: int | None = None) -> GenParams:
    return GenParams(max_tokens=max_tokens, temperature=1.0 if req.temperature is None else req.temperature,
                     top_p=1.0 if req.top_p is None else req.top_p,
                     seed=None if req.seed is None else req.seed + i,  # n choices differ, yet reproducibly
                     stop=req.stops(), logprobs=logprobs, response_format=response_format,
                     prompt_logprobs=prompt_logprobs, streamed=req.stream)


async def start_run(state: ServerState, req: p.Sampling, route: str, ctx: Context, prompts: list[str | list[int]],
                    param: str, lease: Lease, **extra) -> Run:
    """Admit and submit `req.n` generations of each prompt (choice index = prompt index * n + choice) to the
    engine the request leased; the run releases the lease when it closes."""
    served = await state.models.acquire(lease.served)
    run = Run(state, served, route, ctx)
    run._cleanups.append(lease.release)
    try:
        prepared = await run.prepare(prompts, req.max_new_tokens(), param)
        jobs = [Job(prompt, n, gen_params(req, max_tokens, i, **extra))
                for prompt, n, max_tokens in prepared for i in range(req.n)]
        await run.start(jobs)
        if run.remote:  # an upstream's refusal (4xx, none reachable) becomes this response's status
            await run.peek()
    except BaseException:
        run.close()
        raise
    return run


async def stream_events(run: Run, first: list[BaseModel],
                        make: Callable[[int, Piece | None], BaseModel | list[BaseModel] | None],
                        usage_chunk: Callable[[], BaseModel] | None) -> AsyncIterator[str]:
    """SSE lines of a run: `first`, `make`'s chunk per event, the usage chunk if asked, then `[DONE]`. An error
    after the headers went out can only be told in the stream: an `error` event, as OpenAI and vLLM send it."""
    try:
        for chunk in first:
            yield sse(chunk)
        async for i, piece in run.events():
            chunk = make(i, piece)
            for c in chunk if isinstance(chunk, list) else [chunk] if chunk is not None else []:
                yield sse(c)
        if usage_chunk is not None:
            yield sse(usage_chunk())
    except APIError as e:
        yield sse(e.body())
    except Exception:
        log_.exception("generation failed mid-stream on %s", run.route)
        yield sse(bug().body())
    finally:
        run.close()
    yield "data: [DONE]\n\n"


async def collect(run: Run) -> tuple[list[str], list[list[Piece]]]:
    """The whole text and the pieces of every choice (non-streaming); the run is closed after."""
    texts = [""] * len(run.gens)
    pieces: list[list[Piece]] = [[] for _ in run.gens]
    try:
        async for i, piece in run.events():
            if piece is not None:
                texts[i] += piece.text
                pieces[i].append(piece)
    finally:
        run.close()
    return texts, pieces


async def collect_replies(run: Run, replies: Replies | None, log: dict,
                          echo: list[str] | None = None) -> tuple[list[str], list[list[Piece]], list[str]]:
    """`collect`, then each reply (after its `echo`ed prompt, if any) through the output rails (a blocked one becomes
    the refusal, finish_reason content_filter), then the request's record."""
    texts, pieces = await collect(run)
    if echo is not None:  # the echoed prompt is output like the rest: the output rails see it too
        texts = [e + t for e, t in zip(echo, texts)]
    finish = [run.finish_reason(i) for i in range(len(texts))]
    if replies is not None:
        for i, text in enumerate(texts):
            texts[i], blocked = await asyncio.to_thread(replies.whole, text)
            finish[i] = "content_filter" if blocked else finish[i]
    log["output"] = texts
    recording.finish(run.state, log, run.ctx, 200, run)
    return texts, pieces, finish


# ---------------------------------------------------------------------------------------------------------
# Logprobs in OpenAI's two shapes


def _top(text: str, logprob: float) -> p.TopLogprob:
    return p.TopLogprob(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))


def _tok(x: Piece) -> str:
    """The token's own text: `Piece.text` may hold part of it back (a possible stop string, half a character)."""
    return x.token_text if x.token_text is not None else x.text


def chat_logprobs(pieces: list[Piece]) -> p.ChoiceLogprobs:
    """`choices[].logprobs.content`: one entry per token (Piece.text is that token's text)."""
    content = [p.TokenLogprob(token=_tok(x), logprob=x.logprob, bytes=list(_tok(x).encode("utf-8")),
                              top_logprobs=[_top(t, lp) for t, lp in x.top_logprobs or []])
               for x in pieces if x.logprob is not None]
    return p.ChoiceLogprobs(content=content)


def completion_logprobs(pieces: list[Piece], offset: int = 0) -> p.CompletionLogprobs:
    """The legacy shape: parallel lists; text_offset counts characters from the start of the completion."""
    out = p.CompletionLogprobs()
    for x in pieces:
        if x.logprob is None:
            offset += len(x.text)
            continue
        out.tokens.append(_tok(x))
        out.token_logprobs.append(x.logprob)
        out.top_logprobs.append(dict(x.top_logprobs) if x.top_logprobs is not None else None)
        out.text_offset.append(offset)
        offset += len(x.text)
    return out


def echo_logprobs(prompt: list[Piece], pieces: list[Piece], echo: str) -> p.CompletionLogprobs:
    """The legacy shape for echo: the prompt's tokens first (the first one's logprob and top_logprobs null, as
    OpenAI and vLLM send them), then the completion's, whose offsets start after the echoed text."""
    out, offset = p.CompletionLogprobs(), 0
    for x in prompt:
        out.tokens.append(_tok(x))
        out.token_logprobs.append(x.logprob)
        out.top_logprobs.append(dict(x.top_logprobs) if x.top_logprobs is not None else None)
        out.text_offset.append(offset)
        offset += len(_tok(x))
    rest = completion_logprobs(pieces, len(echo))
    out.tokens += rest.tokens
    out.token_logprobs += rest.token_logprobs
    out.top_logprobs += rest.top_logprobs
    out.text_offset += rest.text_offset
    return out


# ---------------------------------------------------------------------------------------------------------
# The services the routes call


class ServingChat:
    route = "/v1/chat/completions"

    def __init__(self, state: ServerState):
        self.state = state

    async def create(self, req: p.ChatCompletionRequest, ctx: Context) -> p.ChatCompletion | Stream:
        refuse_unsupported(req)
        plan = tools.plan(req)
        lease = self.state.models.lease(req.model)  # the engine this request runs on, whatever swaps meanwhile
        served = lease.served
        messages = tools.history(req.messages)
        log = recording.new_record(self.route, req.model, ctx,
                                   [m["content"] for m in messages if m["role"] == "user"], "chatcmpl", served)
        try:
            if self.state.guard is not None:
                refuse_logprobs(self.state, bool(req.logprobs))
                users = [(f"messages[{i}].content", m["content"]) for i, m in enumerate(messages) if m["role"] == "user"]
                clean = iter(await check_input(self.state, users, log))
                messages = [{**m, "content": next(clean)} if m["role"] == "user" else m for m in messages]
            return await self._create(req, ctx, lease, messages, log, plan)
        except BaseException as e:  # a run that started released the lease when it closed; else it is released here
            lease.release()
            if isinstance(e, APIError):
                recording.finish(self.state, log, ctx, e.status)
            raise

    async def _create(self, req: p.ChatCompletionRequest, ctx: Context, lease: Lease, messages: list[dict],
                      log: dict, plan: tools.ToolPlan | None) -> p.ChatCompletion | Stream:
        served = lease.served
        hits = None
        if req.rag is not None:
            if self.state.rag is None:
                raise APIError(400, "this server has no collections (start it with --rag INDEX_DIR)", param="rag",
                               code="rag_not_configured")
            hits = await self.state.rag.search(req.rag, rag.query_of(messages))
            self.state.metrics.rag_retrievals.labels(req.rag.collection).inc()
            prompt, hits = await self._fit(served, messages, hits, req.max_new_tokens(), plan)
            log["rag"] = [{"collection": req.rag.collection, "source": h.source, "heading": h.heading,
                           "score": round(float(h.score), 4)} for h in hits]
        else:
            prompt = await served.slot.call(tools.render, served.slot.engine, messages, plan)
        rf = req.response_format.model_dump(by_alias=True, exclude_none=True) if req.response_format else None
        logprobs = (req.top_logprobs or 0) if req.logprobs else None
        try:
            run = await start_run(self.state, req, self.route, ctx, [prompt], "messages", lease, logprobs=logprobs,
                                  response_format=tools.response_format(plan, rf))
        except UnsupportedFeature as e:
            raise tools.refused(plan, served.slot.engine.name, e) from None
        replies = Replies(self.state, len(run.gens), log) if self.state.guard is not None else None
        if req.stream:
            body = self._stream(run, req, hits, replies, log, plan)
            return Stream(recording.recorded(body, self.state, log, ctx, run), run.close)
        texts, pieces, finish = await collect_replies(run, replies, log)
        replied = [tools.reply(plan, text, finish[i]) for i, text in enumerate(texts)]
        choices = [p.ChatChoice(index=i, message=message, finish_reason=reason,
                                logprobs=chat_logprobs(pieces[i]) if req.logprobs else None)
                   for i, (message, reason) in enumerate(replied)]
        fp = fingerprint(self.state, run.served)
        if hits is not None:
            return p.RagChatCompletion(id=log["request_id"], model=req.model, system_fingerprint=fp,
                                       choices=choices, usage=run.usage(), citations=rag.citations(hits, texts))
        return p.ChatCompletion(id=log["request_id"], model=req.model, system_fingerprint=fp,
                                choices=choices, usage=run.usage())

    @staticmethod
    async def _fit(served: Served, messages: list[dict], hits: list, max_tokens: int | None,
                   plan: tools.ToolPlan | None) -> tuple[str, list]:
        """The prompt with as many sources as fit the context (with room for max_tokens), the lowest-ranked left
        out first; the citations then list exactly the sources the model saw."""
        slot = served.slot
        budget = slot.n_ctx - (max_tokens or 1)
        if getattr(slot.engine, "remote", False):  # no local tokenizer: every source goes; the upstream checks length
            return await slot.call(tools.render, slot.engine, rag.augment(messages, hits), plan), hits
        for n in range(len(hits), -1, -1):
            prompt = await slot.call(tools.render, slot.engine, rag.augment(messages, hits[:n]), plan)
            if n == 0 or len(await slot.call(slot.engine.tokenize, prompt)) <= budget:
                return prompt, hits[:n]
        raise AssertionError("unreachable")

    def _stream(self, run: Run, req: p.ChatCompletionRequest, hits: list | None, replies: Replies | None,
                log: dict, plan: tools.ToolPlan | None) -> AsyncIterator[str]:
        head = {"id": log["request_id"], "created": p.now(), "model": req.model,
                "system_fingerprint": fingerprint(self.state, run.served)}
        # the first chunk of each choice carries the role and no text, as OpenAI's do (content null before calls)
        empty = None if plan is not None and plan.constrained else ""
        first = [p.ChatCompletionChunk(**head, choices=[p.ChatChunkChoice(index=i, delta=p.Delta(role="assistant",
                                                                                                   content=empty))])
                 for i in range(len(run.gens))]
        if hits is not None:  # the sources go out first: a client can show them while the answer streams
            first[0] = p.RagChatCompletionChunk(**first[0].model_dump(), citations=rag.citations(hits, None))
        guarded = GuardedStream(run, replies, log)
        calls = [tools.ToolStream(plan) for _ in run.gens] if plan is not None else None

        def make(i: int, piece: Piece | None) -> p.ChatCompletionChunk | list[p.ChatCompletionChunk] | None:
            text, finish = guarded.step(i, piece)
            if calls is not None:  # the text as content and tool-call deltas (serve/tools.py)
                text, finish, deltas = tools.stream_step(calls[i], text, finish)
                if deltas:
                    lp = chat_logprobs([piece]) if req.logprobs and piece is not None else None
                    return tools.chunks(head, i, text, deltas, finish, lp)
            if finish is not None:
                choice = p.ChatChunkChoice(index=i, delta=p.Delta(content=text) if text else p.Delta(),
                                           finish_reason=finish)
            elif text or piece.logprob is not None:
                choice = p.ChatChunkChoice(index=i, delta=p.Delta(content=text),
                                           logprobs=chat_logprobs([piece]) if req.logprobs else None)
            else:
                return None
            return p.ChatCompletionChunk(**head, choices=[choice])

        usage = req.stream_options is not None and req.stream_options.include_usage
        return stream_events(run, first, make, (lambda: p.ChatCompletionChunk(**head, choices=[], usage=run.usage()))
                             if usage else None)


class ServingCompletion:
    route = "/v1/completions"

    def __init__(self, state: ServerState):
        self.state = state

    async def create(self, req: p.CompletionRequest, ctx: Context) -> p.Completion | Stream:
        refuse_unsupported(req)
        prompts = req.prompts()
        params = ["prompt"] if len(prompts) == 1 else [f"prompt[{i}]" for i in range(len(prompts))]
        lease = self.state.models.lease(req.model)  # the engine this request runs on, whatever swaps meanwhile
        served = lease.served
        try:
            texts = await self._texts(served, prompts, params)
        except BaseException:
            lease.release()
            raise
        log = recording.new_record(self.route, req.model, ctx, list(texts), "cmpl", served)
        try:
            if self.state.guard is not None:
                # echo + logprobs carries the prompt's tokens: refused under redacting output rails like any logprobs
                refuse_logprobs(self.state, req.logprobs is not None)
                checked = await check_input(self.state, list(zip(params, texts)), log)
                # token ids are checked as their text; a rail that redacted it hands the model the redacted text
                prompts = [x if c == t else c for x, t, c in zip(prompts, texts, checked)]
                texts = checked
            scored = req.logprobs if req.echo else None  # the prompt's logprobs: only for echo with logprobs
            run = await start_run(self.state, req, self.route, ctx, prompts, "prompt", lease, logprobs=req.logprobs,
                                  prompt_logprobs=scored)
        except BaseException as e:  # a run that started released the lease when it closed; else it is released here
            lease.release()
            if isinstance(e, APIError):
                recording.finish(self.state, log, ctx, e.status)
            raise
        replies = Replies(self.state, len(run.gens), log) if self.state.guard is not None else None
        if req.stream:
            body = self._stream(run, req, replies, log)
            return Stream(recording.recorded(body, self.state, log, ctx, run), run.close)
        echo = [texts[i // req.n] for i in range(len(run.gens))] if req.echo else None  # choice i is prompt i // n
        texts, pieces, finish = await collect_replies(run, replies, log, echo)
        choices = [p.CompletionChoice(index=i, text=text, finish_reason=finish[i],
                                      logprobs=None if req.logprobs is None else
                                      echo_logprobs(run.gens[i].prompt_logprobs or [], pieces[i], echo[i]) if echo
                                      else completion_logprobs(pieces[i]))
                   for i, text in enumerate(texts)]
        return p.Completion(id=log["request_id"], model=req.model,
                            system_fingerprint=fingerprint(self.state, run.served), choices=choices, usage=run.usage())

    async def _texts(self, served: Served, prompts: list[str | list[int]], params: list[str]) -> list[str]:
        """The text of each prompt (token ids detokenized), after checking the ids against the model's vocabulary."""
        if all(isinstance(x, str) for x in prompts):
            return list(prompts)
        model, slot = served.id, served.slot
        if getattr(slot.engine, "remote", False):
            raise APIError(400, f"'{model}' is served by an upstream: token-id prompts need its tokenizer; send text",
                           param=params[0], code="unsupported_parameter")
        n = slot.engine.n_vocab
        for param, x in zip(params, prompts):
            bad = [t for t in x if t >= n] if isinstance(x, list) else []
            if bad:
                raise APIError(400, f"{param} holds token ids outside the vocabulary of '{model}' (0 to {n - 1}): "
                                    f"{', '.join(map(str, bad[:5]))}", param=param, code="invalid_prompt")
        return [x if isinstance(x, str) else await slot.call(slot.engine.detokenize, x) for x in prompts]

    def _stream(self, run: Run, req: p.CompletionRequest, replies: Replies | None, log: dict) -> AsyncIterator[str]:
        head = {"id": log["request_id"], "created": p.now(), "model": req.model,
                "system_fingerprint": fingerprint(self.state, run.served)}
        offsets = [0] * len(run.gens)
        guarded = GuardedStream(run, replies, log)

        def make(i: int, piece: Piece | None) -> p.Completion | None:
            text, finish = guarded.step(i, piece)
            if finish is not None:
                choice = p.CompletionChoice(index=i, text=text, finish_reason=finish)
            elif text or piece.logprob is not None:
                lp = completion_logprobs([piece], offsets[i]) if req.logprobs is not None else None
                offsets[i] += len(text)
                choice = p.CompletionChoice(index=i, text=text, logprobs=lp)
            else:
                return None
            return p.Completion(**head, choices=[choice])

        usage = req.stream_options is not None and req.stream_options.include_usage
        return stream_events(run, [], make, (lambda: p.Completion(**head, choices=[], usage=run.usage()))
                             if usage else None)


class ServingEmbedding:
    route = "/v1/embeddings"

    def __init__(self, state: ServerState):
        self.state = state

    async def create(self, req: p.EmbeddingRequest, ctx: Context) -> p.EmbeddingList:
        emb = self.state.embedder
        if emb is None or req.model != emb.id:
            if req.model in self.state.models.entries:
                served_by = f"; embeddings are served by '{emb.id}'" if emb else ""
                raise APIError(400, f"'{req.model}' is a generation model{served_by}", param="model",
                               code="model_not_supported")
            known = f"'{emb.id}'" if emb else "none (the server was started without an embedder)"
            raise APIError(404, f"the embedding model '{req.model}' does not exist; this server has {known}",
                           param="model", code="model_not_found")
        texts = req.inputs()
        for i, t in enumerate(texts):
            if not t:
                raise APIError(400, f"input[{i}] is empty", param=f"input[{i}]" if len(texts) > 1 else "input")
        if req.dimensions is not None and req.dimensions != (dims := await emb.dimensions()):
            raise APIError(400, f"{emb.id} makes {dims}-dimensional vectors; other dimensions are not supported",
                           param="dimensions", code="unsupported_parameter")
        vectors, counts = await emb.encode(texts)
        self.state.limiter.charge(ctx.client, sum(counts))
        self.state.metrics.prompt_tokens.inc(sum(counts))
        if req.encoding_format == "base64":  # float32 little-endian, as OpenAI encodes it
            data = [p.Embedding(index=i, embedding=base64.b64encode(v.tobytes()).decode()) for i, v in enumerate(vectors)]
        else:
            data = [p.Embedding(index=i, embedding=v.tolist()) for i, v in enumerate(vectors)]
        return p.EmbeddingList(data=data, model=emb.id,
                               usage=p.EmbeddingUsage(prompt_tokens=sum(counts), total_tokens=sum(counts)))


class ServingModels:
    def __init__(self, state: ServerState):
        self.state = state

    def cards(self) -> list[p.ModelCard]:
        cards = [p.ModelCard(id=s.id, created=s.created, parent=s.parent, llmkit_version=s.version)
                 for s in self.state.models.entries.values()]
        if self.state.embedder is not None:
            cards.append(p.ModelCard(id=self.state.embedder.id, created=min((c.created for c in cards), default=p.now())))
        return cards

    def list(self) -> p.ModelList:
        return p.ModelList(data=self.cards())

    def retrieve(self, id: str) -> p.ModelCard:
        for card in self.cards():
            if card.id == id:
                return card
        raise APIError(404, f"the model '{id}' does not exist", param="model", code="model_not_found")
