// Chat: llama.cpp's chat-template engine (common/chat.h), its tool-call parser and its JSON schema to
// GBNF converter. Messages and tools cross the boundary as OpenAI-shaped JSON text.
#include "core.h"

#include "chat.h"
#include "json-schema-to-grammar.h"
#include "json.h"
#include "jinja/limits.h"

#include <array>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace rewire {

static common_json parse_json(const std::string & text, const char * what) {
    try {
        return common_json::parse(text);
    } catch (const std::exception & e) {
        throw py::value_error(std::string(what) + " is not valid JSON: " + e.what());
    }
}

// A template's resource limit (jinja/limits.h) as the error of the call that hit it.
[[noreturn]] static void throw_limit(const std::string & msg, const char * when) {
    throw chat_error(msg + " (" + when + "; the template is unusable: pass chat_format or chat_handler)");
}

// The prompt cut into (text, from_user) parts: the byte ranges that came from the request, as
// recorded by the render whose text the prompt starts with (the prompt may append text after it).
// Without such a render the whole prompt is one template part.
static std::vector<std::pair<std::string, bool>> prompt_parts(const std::string & prompt,
                                                               const common_chat_render_recorder & rec) {
    const common_chat_render_record * best = nullptr;
    for (const auto & r : rec.renders) {
        if (r.text.size() <= prompt.size() && prompt.compare(0, r.text.size(), r.text) == 0 &&
            (!best || r.text.size() > best->text.size())) {
            best = &r;
        }
    }
    std::vector<std::pair<std::string, bool>> parts;
    size_t pos = 0;
    if (best) {
        for (const auto & [begin, end] : best->input_spans) {
            if (begin > pos) {
                parts.emplace_back(prompt.substr(pos, begin - pos), false);
            }
            if (!parts.empty() && parts.back().second) {
                parts.back().first += prompt.substr(begin, end - begin);
            } else {
                parts.emplace_back(prompt.substr(begin, end - begin), true);
            }
            pos = end;
        }
    }
    if (pos < prompt.size()) {
        parts.emplace_back(prompt.substr(pos), false);
    }
    return parts;
}

// The rendered prompt and what generation needs to follow the format (grammar, stops, parser).
class chat_render {
public:
    chat_render(common_chat_params p, std::vector<std::pair<std::string, bool>> parts)
        : params_(std::move(p)), parts_(std::move(parts)) {
        parser_ = common_chat_parser_params(params_);
        if (!params_.parser.empty()) {
            parser_.parser.load(params_.parser);
        }
    }

    const common_chat_params & params() const { return params_; }

    // what the render used of the template limits: peak depth, steps, list items, text bytes
    std::array<size_t, 4> cost{};

    py::list parts() const {
        py::list out;
        for (const auto & [text, from_user] : parts_) {
            out.append(py::make_tuple(py::bytes(text), from_user));
        }
        return out;
    }

    py::list triggers() const {
        py::list out;
        for (const auto & t : params_.grammar_triggers) {
            const char * kind = t.type == COMMON_GRAMMAR_TRIGGER_TYPE_TOKEN        ? "token"
                              : t.type == COMMON_GRAMMAR_TRIGGER_TYPE_WORD         ? "word"
                              : t.type == COMMON_GRAMMAR_TRIGGER_TYPE_PATTERN      ? "pattern"
                                                                                   : "pattern_full";
            out.append(py::make_tuple(kind, t.value, t.token));
        }
        return out;
    }

    // The assistant message in generated text, as OpenAI JSON (content, reasoning_content, tool_calls).
    std::string parse(const std::string & text, bool is_partial) const {
        common_chat_msg msg;
        try {
            msg = common_chat_parse(text, is_partial, parser_);
        } catch (const std::exception & e) {
            throw chat_error(std::string("could not parse the model's output: ") + e.what());
        }
        msg.role = "assistant";
        return msg.to_json_oaicompat().dump();
    }

private:
    common_chat_params                        params_;
    std::vector<std::pair<std::string, bool>> parts_;
    common_chat_parser_params                 parser_;
};

// The chat templates of a model (or one given as text), rendered by llama.cpp's Jinja engine.
class chat_templates {
public:
    chat_templates(std::shared_ptr<model> mdl, const std::string & override_tmpl, const std::string & bos,
                   const std::string & eos)
        : model_(std::move(mdl)) {
        if (!model_ && override_tmpl.empty()) {
            throw chat_error("a chat template needs a model or the template text");
        }
        {
            // parsing and capability detection (which renders the template with test messages) run
            // under one budget; detection ignores failed renders, so a tripped budget is checked after
            py::gil_scoped_release release;
            std::string            error;
            std::string            limit;
            {
                jinja::limits_scope scope;
                try {
                    tmpls_ = common_chat_templates_init(model_ ? model_->get() : nullptr, override_tmpl, bos, eos);
                } catch (const jinja::limit_exceeded & e) {
                    limit = e.what();
                } catch (const std::exception & e) {
                    error = e.what();
                }
                if (limit.empty() && !scope.get().tripped.empty()) {
                    limit = scope.get().tripped;
                }
            }
            py::gil_scoped_acquire acquire;
            if (!limit.empty()) {
                tmpls_.reset();
                throw_limit(limit, "while reading the template");
            }
            if (!error.empty()) {
                throw chat_error("invalid chat template: " + error);
            }
        }
        if (!tmpls_) {
            throw chat_error("no chat template");
        }
    }

    std::string source() const { return common_chat_templates_source(tmpls_.get()); }
    bool explicit_template() const { return common_chat_templates_was_explicit(tmpls_.get()); }

    std::unique_ptr<chat_render> apply(const std::string & messages_json, const std::string & tools_json,
                                       const std::string & tool_choice, const std::string & json_schema,
                                       const std::string & grammar, bool add_generation_prompt,
                                       bool parallel_tool_calls, bool enable_thinking,
                                       const std::map<std::string, std::string> & kwargs) const {
        common_chat_templates_inputs in;
        try {
            in.messages = common_chat_msgs_parse_oaicompat(parse_json(messages_json, "messages"));
            if (!tools_json.empty()) {
                in.tools = common_chat_tools_parse_oaicompat(parse_json(tools_json, "tools"));
            }
            in.tool_choice = common_chat_tool_choice_parse_oaicompat(tool_choice.empty() ? "auto" : tool_choice);
        } catch (const py::error_already_set &) {
            throw;
        } catch (const std::exception & e) {
            throw chat_error(std::string("invalid chat request: ") + e.what());
        }
        in.json_schema           = json_schema;
        in.grammar               = grammar;
        in.add_generation_prompt = add_generation_prompt;
        in.parallel_tool_calls   = parallel_tool_calls;
        in.enable_thinking       = enable_thinking;
        in.chat_template_kwargs  = kwargs;
        in.use_jinja             = true;
        common_chat_params                        out;
        std::vector<std::pair<std::string, bool>> parts;
        std::array<size_t, 4>                     cost{};
        std::string                               error;
        std::string                               limit;
        {
            py::gil_scoped_release      release;
            jinja::limits_scope         scope;
            common_chat_render_recorder recorder;
            try {
                out   = common_chat_templates_apply(tmpls_.get(), in);
                parts = prompt_parts(out.prompt, recorder);
            } catch (const jinja::limit_exceeded & e) {
                limit = e.what();
            } catch (const std::exception & e) {
                error = e.what();
            }
            if (limit.empty() && !scope.get().tripped.empty()) {
                limit = scope.get().tripped;
            }
            const jinja::budget & b = scope.get();
            cost = {b.peak_depth, b.steps, b.items, b.bytes};
        }
        if (!limit.empty()) {
            throw_limit(limit, "while rendering the messages");
        }
        if (!error.empty()) {
            throw chat_error("the chat template failed: " + error);
        }
        auto render = std::make_unique<chat_render>(std::move(out), std::move(parts));
        render->cost = cost;
        return render;
    }

private:
    std::shared_ptr<model>    model_;
    common_chat_templates_ptr tmpls_;
};

static std::string schema_to_grammar(const std::string & schema_json) {
    const common_json schema = parse_json(schema_json, "the JSON schema");
    try {
        return json_schema_to_grammar(schema);
    } catch (const std::exception & e) {
        throw grammar_error(std::string("unsupported JSON schema: ") + e.what());
    }
}

void bind_chat(py::module_ & m) {
    py::class_<chat_render>(m, "ChatRender", "A rendered chat prompt and its generation constraints.")
        .def_property_readonly("prompt", [](const chat_render & r) { return py::bytes(r.params().prompt); })
        .def_property_readonly("prompt_parts", &chat_render::parts,
                               "The prompt as (text, from_user) parts: from_user text came from the request.")
        .def_property_readonly("grammar", [](const chat_render & r) { return r.params().grammar; })
        .def_property_readonly("grammar_lazy", [](const chat_render & r) { return r.params().grammar_lazy; })
        .def_property_readonly("grammar_triggers", &chat_render::triggers)
        .def_property_readonly("preserved_tokens", [](const chat_render & r) { return r.params().preserved_tokens; })
        .def_property_readonly("additional_stops", [](const chat_render & r) { return r.params().additional_stops; })
        .def_property_readonly("generation_prompt", [](const chat_render & r) { return r.params().generation_prompt; })
        .def_property_readonly("format", [](const chat_render & r) {
            return std::string(common_chat_format_name(r.params().format));
        })
        .def_property_readonly("template_cost", [](const chat_render & r) {
            py::dict d;
            d["depth"] = r.cost[0];
            d["steps"] = r.cost[1];
            d["items"] = r.cost[2];
            d["bytes"] = r.cost[3];
            return d;
        }, "What rendering used of the template limits (see chat_template_limits).")
        .def("parse", &chat_render::parse, py::arg("text"), py::arg("is_partial") = false);

    py::class_<chat_templates>(m, "ChatTemplates", "A model's chat template (or one given as text).")
        .def(py::init<std::shared_ptr<model>, const std::string &, const std::string &, const std::string &>(),
             py::arg("model"), py::arg("template") = "", py::arg("bos_token") = "", py::arg("eos_token") = "")
        .def_property_readonly("source", &chat_templates::source)
        .def_property_readonly("explicit", &chat_templates::explicit_template)
        .def("apply", &chat_templates::apply, py::arg("messages"), py::arg("tools") = "",
             py::arg("tool_choice") = "auto", py::arg("json_schema") = "", py::arg("grammar") = "",
             py::arg("add_generation_prompt") = true, py::arg("parallel_tool_calls") = false,
             py::arg("enable_thinking") = true, py::arg("kwargs") = std::map<std::string, std::string>());

    m.def("chat_template_limits", []() {
        const jinja::limits & l = jinja::default_limits();
        py::dict d;
        d["depth"]   = l.max_depth;
        d["steps"]   = l.max_steps;
        d["items"]   = l.max_items;
        d["bytes"]   = l.max_bytes;
        d["seconds"] = l.max_seconds;
        return d;
    }, "The resource limits of every chat template render (depth, steps, items, bytes, seconds).");
    m.def("set_chat_template_limits", [](std::optional<size_t> depth, std::optional<size_t> steps,
                                         std::optional<size_t> items, std::optional<size_t> bytes,
                                         std::optional<double> seconds) {
        jinja::limits l = jinja::default_limits();
        if (depth)   { l.max_depth = *depth; }
        if (steps)   { l.max_steps = *steps; }
        if (items)   { l.max_items = *items; }
        if (bytes)   { l.max_bytes = *bytes; }
        if (seconds) { l.max_seconds = *seconds; }
        if (l.max_depth < 16 || l.max_depth > 1000) {
            // a level takes about 2 KB of native stack: 1000 levels fit a 2 MB thread stack
            throw py::value_error("depth must be in [16, 1000] (deeper nesting can overflow the native stack)");
        }
        if (l.max_steps == 0 || l.max_items == 0 || l.max_bytes == 0 || !(l.max_seconds > 0)) {
            throw py::value_error("steps, items, bytes and seconds must be positive");
        }
        jinja::default_limits() = l;
    }, py::arg("depth") = py::none(), py::arg("steps") = py::none(), py::arg("items") = py::none(),
       py::arg("bytes") = py::none(), py::arg("seconds") = py::none(),
       "Change the resource limits of chat template renders (process-wide; set before rendering).");

    m.def("json_schema_to_grammar", &schema_to_grammar, py::arg("schema"),
          "GBNF text for a JSON schema (given as JSON text).");
}

} // namespace rewire
