"""Tool calling on /v1/chat/completions, as OpenAI defines it (`tools`, `tool_choice`, `parallel_tool_calls`).

    tool_choice            what the model may write                       how it is held to it
    none                   text; the tools are not shown to it            nothing
    auto (default w/ tools) text, or calls it chooses to make              the prompt shows the tools; the reply is
                                                                          parsed (`<tool_call>{...}</tool_call>`, or
                                                                          a reply that is one JSON call); a call to
                                                                          an unknown function or with arguments that
                                                                          fail its schema is left as text
    required               one call (an array of ≥ 1 with parallel calls)  grammar: JSON {"name", "arguments"}, each
    {"type": "function",   one call of that function                      name one of the tools' and its arguments
     "function": {name}}                                                  the function's `parameters` schema

The grammar is the one `response_format: json_schema` uses (llama.cpp's GBNF from a JSON schema), so required
and named calls need the llamacpp engine; the transformers engine serves `auto` and `none`.

The prompt: a chat template that reads `tools` (Hermes, Qwen 2.5, Llama 3.1 ...) gets them as the template's
`tools` variable and the history as it is (assistant `tool_calls`, `tool` messages). A template that does not
(SmolLM2's plain ChatML) gets them as text instead, in the Hermes form those models were trained on: a system
message listing the tools and asking for `<tool_call>` blocks, earlier calls written as such blocks, and tool
results as user turns in `<tool_response>` tags. A model never trained on tools may still answer in text under
`auto`; that answer is returned as text, not forced into a call.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from llmkit.engines.base import template_uses_tools
from llmkit.serve import protocol as p
from llmkit.serve.errors import APIError

log = logging.getLogger("llmkit.serve")

NO_ARGS = {"type": "object", "properties": {}, "additionalProperties": False}
OPEN, CLOSE = "<tool_call>", "</tool_call>"


@dataclass
class ToolPlan:
    tools: list[p.Tool]
    choice: str  # none | auto | required | named
    name: str | None = None  # the named function
    parallel: bool = True
    schemas: dict[str, dict] = field(default_factory=dict)  # function name → its arguments' schema

    @property
    def constrained(self) -> bool:
        return self.choice in ("required", "named")

    def tool_dicts(self) -> list[dict]:
        return [t.model_dump(exclude_none=True) for t in self.tools]

    def response_format(self) -> dict | None:
        """The grammar's JSON schema, as a response_format the engines already enforce."""
        if self.choice == "named":
            schema = self.schemas[self.name]
        elif self.choice == "required":
            # each tool's schema under the root's $defs (llama.cpp's converter follows pointers through objects
            # only, not array indices), its own local $refs rebased to point into it there
            defs = {name: _rebase(s, f"#/$defs/{name}") for name, s in self.schemas.items()}
            calls = [{"type": "object", "required": ["name", "arguments"], "additionalProperties": False,
                      "properties": {"name": {"const": name}, "arguments": {"$ref": f"#/$defs/{name}"}}}
                     for name in self.schemas]
            one = {"anyOf": calls} if len(calls) > 1 else calls[0]
            schema = {"type": "array", "items": one, "minItems": 1} if self.parallel else dict(one)
            schema["$defs"] = defs
        else:
            return None
        return {"type": "json_schema", "json_schema": {"name": "tool_calls", "schema": schema}}


def _rebase(schema, at: str):
    """A tool's schema to be placed at JSON pointer `at` of the grammar's schema: its local `$ref`s (pydantic's
    `#/$defs/...`, which LangChain's tools carry) rewritten to point into it there."""
    if isinstance(schema, list):
        return [_rebase(x, at) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _rebase(v, at) for k, v in schema.items()}
    ref = schema.get("$ref")
    if isinstance(ref, str) and (ref == "#" or ref.startswith("#/")):
        out["$ref"] = at + ref[1:]
    return out


def plan(req: p.ChatCompletionRequest) -> ToolPlan | None:
    """The request's tool settings, checked together (all problems in one 400); None when it has no tools."""
    problems: list[tuple[str, str]] = []
    choice, name = req.tool_choice, None
    names = [t.function.name for t in req.tools or []]
    for i, n in enumerate(names):
        if n in names[:i]:
            problems.append((f"tools[{i}].function.name", f"the function name '{n}' is given twice"))
    if isinstance(choice, p.NamedToolChoice):
        name, choice = choice.function.name, "named"
        if req.tools and name not in names:
            problems.append(("tool_choice.function.name",
                             f"tool_choice names the function '{name}', which is not in tools ({', '.join(names)})"))
    if not req.tools:
        if choice in ("named", "required"):
            problems.append(("tool_choice", f"tool_choice {choice!r} needs tools"))
        if req.parallel_tool_calls is not None:
            problems.append(("parallel_tool_calls", "parallel_tool_calls is only allowed when tools are given"))
    elif choice not in (None, "none") and req.response_format is not None and req.response_format.type != "text":
        problems.append(("response_format", "response_format json_object/json_schema cannot be combined with "
                                             "tools (unless tool_choice is none); a tool call is already JSON"))
    if problems:
        raise APIError(400, "; ".join(f"'{param}': {why}" for param, why in problems), param=problems[0][0],
                       code="invalid_value")
    if not req.tools:
        return None
    schemas = {t.function.name: t.function.parameters if t.function.parameters is not None else NO_ARGS
               for t in req.tools}
    return ToolPlan(req.tools, choice or "auto", name, req.parallel_tool_calls is not False, schemas)


def response_format(tools: ToolPlan | None, requested: dict | None) -> dict | None:
    """What the engine is to enforce: the tools' grammar for required and named calls, else the request's own."""
    return tools.response_format() if tools is not None and tools.constrained else requested


def refused(tools: ToolPlan | None, engine: str, e: Exception) -> Exception:
    """An engine's refusal of the tools' grammar (its words name response_format) as the 400 naming tool_choice."""
    if tools is None or not tools.constrained:
        return e
    return APIError(400, f"tool_choice {tools.choice!r} constrains the reply to the tools' schemas, which the "
                         f"{engine} engine cannot do: {e}", param="tool_choice", code="unsupported_parameter")


# ---------------------------------------------------------------------------------------------------------
# The prompt


def history(messages: list[p.ChatMessage]) -> list[dict]:
    """OpenAI messages as chat templates take them: assistant calls with their arguments as objects (what
    transformers' templates expect), tool results with the name of the function they answer."""
    names: dict[str, str] = {}
    out = []
    for m in messages:
        d: dict = {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
        if m.tool_calls:
            d["tool_calls"] = []
            for c in m.tool_calls:
                names[c.id] = c.function.name
                d["tool_calls"].append({"id": c.id, "type": "function",
                                        "function": {"name": c.function.name, "arguments": _loads(c.function.arguments)}})
        if m.role == "tool":
            d["tool_call_id"] = m.tool_call_id
            if m.tool_call_id in names or m.name:
                d["name"] = m.name or names[m.tool_call_id]
        out.append(d)
    return out


def _loads(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def as_text(messages: list[dict], tools: ToolPlan | None) -> list[dict]:
    """The history for a template that does not know tools: the tools in the system message, calls and results
    written out in the Hermes form (module doc)."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            blocks = [f"{OPEN}\n{json.dumps({'name': c['function']['name'], 'arguments': c['function']['arguments']})}"
                      f"\n{CLOSE}" for c in m["tool_calls"]]
            out.append({"role": "assistant", "content": "\n".join(([m["content"]] if m["content"] else []) + blocks)})
        elif m["role"] == "tool":
            out.append({"role": "user", "content": f"<tool_response>\n{m['content']}\n</tool_response>"})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    if tools is not None and tools.choice != "none":
        listing = "\n".join(json.dumps(t) for t in tools.tool_dicts())
        text = ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
                f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listing}\n"
                "</tools>\n\nFor each function call, return a json object with function name and arguments within "
                f"{OPEN}{CLOSE} XML tags:\n{OPEN}\n"
                '{"name": <function-name>, "arguments": <args-json-object>}\n' f"{CLOSE}")
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": f"{out[0]['content']}\n\n{text}"}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def render(engine, messages: list[dict], tools: ToolPlan | None) -> str:
    """The prompt of `messages` (from `history`) with the tools, on the engine's worker (it calls the engine)."""
    has_calls = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    if tools is None and not has_calls:
        return engine.format_chat(messages)
    if template_uses_tools(getattr(engine, "chat_template", None)):
        shown = tools.tool_dicts() if tools is not None and tools.choice != "none" else None
        return engine.format_chat([{**m, "content": m["content"] or ""} for m in messages], tools=shown)
    return engine.format_chat(as_text(messages, tools))


# ---------------------------------------------------------------------------------------------------------
# The reply


def _valid(tools: ToolPlan, name, args) -> bool:
    if name not in tools.schemas or not isinstance(args, dict):
        return False
    import jsonschema

    try:
        jsonschema.validate(args, tools.schemas[name])
    except jsonschema.ValidationError:
        return False
    except jsonschema.SchemaError:
        log.warning("the tool '%s' has a schema jsonschema cannot check; its calls are not validated", name)
    return True


def _call(tools: ToolPlan, obj) -> p.ToolCall | None:
    """A call out of a parsed `{"name", "arguments"}` (Llama 3.1 writes "parameters"), None if it is not a valid
    call of one of the tools."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    args = obj.get("arguments", obj.get("parameters", {}))
    args = _loads(args) if isinstance(args, str) else args
    if not _valid(tools, name, args):
        return None
    return p.ToolCall(function=p.FunctionCallOut(name=name, arguments=json.dumps(args, ensure_ascii=False)))


def _calls_in(tools: ToolPlan, objs: list) -> list[p.ToolCall] | None:
    calls = [_call(tools, o) for o in objs]
    return calls if calls and all(c is not None for c in calls) else None


def split_auto(text: str) -> tuple[str, str]:
    """(text before a tool call, the call part): the call part starts at the first `<tool_call>`, or is the
    whole reply when that is JSON; ("text", "") when the reply has no call."""
    at = text.find(OPEN)
    if at >= 0:
        return text[:at], text[at:]
    if text.lstrip()[:1] in ("{", "["):
        return "", text
    return text, ""


def parse_calls(tools: ToolPlan, part: str) -> list[p.ToolCall] | None:
    """The calls in the call part of an `auto` reply (`split_auto`), or None if any of them is not a valid call."""
    if part.lstrip().startswith(OPEN):
        blocks = re.findall(rf"{re.escape(OPEN)}\s*(.*?)\s*(?:{re.escape(CLOSE)}|$)", part, re.S)
        objs = []
        for b in blocks:
            obj = _loads(b)
            if isinstance(obj, str):
                return None
            objs += obj if isinstance(obj, list) else [obj]
        return _calls_in(tools, objs)
    obj = _loads(part.strip())
    return None if isinstance(obj, str) else _calls_in(tools, obj if isinstance(obj, list) else [obj])


def reply(tools: ToolPlan | None, text: str, finish: str) -> tuple[p.AssistantMessage, str]:
    """(message, finish_reason) of a whole reply: calls with `content: null` and finish `tool_calls` when it made
    valid ones; else the text as it came (a grammar cut short by max_tokens is text with finish `length`)."""
    if tools is None or finish == "content_filter":
        return p.AssistantMessage(content=text), finish
    if tools.choice == "named":
        calls = _calls_in(tools, [{"name": tools.name, "arguments": _loads(text)}])
        content = None
    elif tools.choice == "required":
        obj = _loads(text)
        calls = None if isinstance(obj, str) else _calls_in(tools, obj if isinstance(obj, list) else [obj])
        content = None
    elif tools.choice == "auto":
        content, part = split_auto(text)
        calls = parse_calls(tools, part) if part else None
        content = content.strip() or None
    else:
        calls = None
    if calls is None:
        if tools.constrained and finish == "stop":  # the grammar held, yet the call fails its schema
            log.warning("a grammar-constrained tool call failed its schema check: %.200s", text)
        return p.AssistantMessage(content=text), finish
    return p.AssistantMessage(content=content, tool_calls=calls), "tool_calls"


# ---------------------------------------------------------------------------------------------------------
# Streaming


def _start(index: int, name: str) -> p.ToolCallDelta:
    return p.ToolCallDelta(index=index, id=p.ToolCall(function=p.FunctionCallOut(name=name, arguments="")).id,
                           type="function", function=p.FunctionDelta(name=name, arguments=""))


def _args(index: int, fragment: str) -> p.ToolCallDelta:
    return p.ToolCallDelta(index=index, function=p.FunctionDelta(arguments=fragment))


# the start of one call in the required grammar's output, up to the brace that opens its arguments
_HEAD = re.compile(r'[\s\[\],}]*\{\s*"name"\s*:\s*"([A-Za-z0-9_-]+)"\s*,\s*"arguments"\s*:\s*(?=\{)')


class ToolStream:
    """One choice's streamed text as OpenAI's deltas: `feed` a text piece, get (content, tool call deltas) to
    send; `close` at the end gives the rest and the finish reason.

    named: the text is the arguments object, streamed as it comes after a first delta naming the function.
    required: the grammar's JSON is scanned: each call's first delta when its name and `"arguments":` are out,
    then its arguments' characters up to the brace that closes them. auto: text streams as content until a call
    may start (`<tool_call>`, or a reply opening with `{`/`[`); from there it is held and parsed at the end, and
    sent as calls (one delta each with the whole arguments) or, if it is no valid call, as text — the same
    split `reply` makes of a whole reply.
    """

    def __init__(self, tools: ToolPlan):
        self.tools = tools
        self.text = ""  # auto: everything so far
        self.sent = 0  # auto: how much of it went out as content
        self.holding = False  # auto: a call may have started at text[sent:]
        self.buf = ""  # required: text not yet scanned
        self.n = 0  # calls started
        self.depth = -1  # required: brace depth inside the current arguments, -1 outside them
        self.in_str = self.esc = False

    def feed(self, text: str) -> tuple[str, list[p.ToolCallDelta]]:
        if not text:
            return "", []
        if self.tools.choice == "named":
            out = [_start(0, self.tools.name)] if self.n == 0 else []
            self.n = 1
            return "", out + [_args(0, text)]
        if self.tools.choice == "required":
            return "", self._scan(text)
        if self.tools.choice == "auto":
            return self._auto(text), []
        return text, []

    def _scan(self, text: str) -> list[p.ToolCallDelta]:
        self.buf += text
        out: list[p.ToolCallDelta] = []
        while self.buf:
            if self.depth < 0:
                m = _HEAD.match(self.buf)
                if m is None:
                    break  # the head is not all out yet (or only closing brackets are left)
                out.append(_start(self.n, m.group(1)))
                self.n += 1
                self.buf, self.depth = self.buf[m.end():], 0
                continue
            i = self._args_end()
            frag, self.buf = (self.buf, "") if i is None else (self.buf[:i], self.buf[i:])
            if frag:
                out.append(_args(self.n - 1, frag))
            if i is None:
                break
            self.depth = -1
        return out

    def _args_end(self) -> int | None:
        """Where the current arguments object ends in `buf` (one past its closing brace), None if not yet."""
        for i, ch in enumerate(self.buf):
            if self.in_str:
                self.esc, self.in_str = (False, True) if self.esc else (ch == "\\", ch != '"')
            elif ch == '"':
                self.in_str = True
            elif ch in "{[":
                self.depth += 1
            elif ch in "}]":
                self.depth -= 1
                if self.depth == 0:
                    return i + 1
        return None

    def _auto(self, text: str) -> str:
        self.text += text
        if self.holding:
            return ""
        content, part = split_auto(self.text)
        if part:
            self.holding = True
            end = len(content)
        elif not content.strip():
            end = 0  # only blanks so far: the reply may still open with a JSON call
        else:  # hold back what may be the start of `<tool_call>`
            keep = next((k for k in range(min(len(OPEN) - 1, len(content)), 0, -1)
                         if OPEN.startswith(content[-k:])), 0)
            end = len(content) - keep
        send = content[self.sent:max(end, self.sent)]
        self.sent += len(send)
        return send

    def close(self, finish: str) -> tuple[str, list[p.ToolCallDelta], str]:
        """(content, tool call deltas, finish_reason) at the end of the choice."""
        if self.tools.choice == "auto":
            rest = self.text[self.sent:]
            calls = parse_calls(self.tools, rest) if self.holding and finish != "content_filter" else None
            if calls is None:
                return rest, [], finish
            out = []
            for i, c in enumerate(calls):
                out += [_start(i, c.function.name), _args(i, c.function.arguments)]
            return "", out, "tool_calls"
        if self.tools.constrained and finish == "stop" and self.n:
            return "", [], "tool_calls"
        return "", [], finish


def stream_step(calls: ToolStream, text: str, finish: str | None) -> tuple[str, str | None, list[p.ToolCallDelta]]:
    """One streamed event (text out of the output rails, finish reason when the choice ended) as (content,
    finish reason, tool-call deltas). A blocked reply's refusal goes out as content after what was held."""
    if finish is None:
        content, deltas = calls.feed(text)
        return content, None, deltas
    content, deltas = calls.feed(text) if finish != "content_filter" else ("", [])
    rest, more, finish = calls.close(finish)
    return content + rest + (text if finish == "content_filter" else ""), finish, deltas + more


def chunks(head: dict, i: int, text: str, deltas: list[p.ToolCallDelta], finish: str | None,
           logprobs: p.ChoiceLogprobs | None) -> list[p.ChatCompletionChunk]:
    """Choice i's chunks for one event: its text, then one chunk per call delta (as OpenAI sends them), then the
    finish reason in a chunk of its own."""
    ds = ([p.Delta(content=text)] if text else []) + [p.Delta(tool_calls=[d]) for d in deltas]
    out = [p.ChatChunkChoice(index=i, delta=d, logprobs=logprobs if k == 0 else None) for k, d in enumerate(ds)]
    if finish is not None:
        out.append(p.ChatChunkChoice(index=i, delta=p.Delta(), finish_reason=finish))
    return [p.ChatCompletionChunk(**head, choices=[c]) for c in out]
