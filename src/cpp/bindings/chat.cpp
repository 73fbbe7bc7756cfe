// Chat: llama.cpp's chat-template engine (common/chat.h), its tool-call parser and its JSON schema to
// GBNF converter. Messages and tools cross the boundary as OpenAI-shaped JSON text.
#include "core.h"

#include "chat.h"
#include "json-schema-to-grammar.h"
#include "json.h"

#include <map>
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

// The rendered prompt and what generation needs to follow the format (grammar, stops, parser).
class chat_render {
public:
    explicit chat_render(common_chat_params p) : params_(std::move(p)) {
        parser_ = common_chat_parser_params(params_);
        if (!params_.parser.empty()) {
            parser_.parser.load(params_.parser);
        }
    }

    const common_chat_params & params() const { return params_; }

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
    common_chat_params        params_;
    common_chat_parser_params parser_;
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
        try {
            tmpls_ = common_chat_templates_init(model_ ? model_->get() : nullptr, override_tmpl, bos, eos);
        } catch (const std::exception & e) {
            throw chat_error(std::string("invalid chat template: ") + e.what());
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
        common_chat_params out;
        {
            py::gil_scoped_release release;
            try {
                out = common_chat_templates_apply(tmpls_.get(), in);
            } catch (const std::exception & e) {
                py::gil_scoped_acquire acquire;
                throw chat_error(std::string("the chat template failed: ") + e.what());
            }
        }
        return std::make_unique<chat_render>(std::move(out));
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
        .def_property_readonly("grammar", [](const chat_render & r) { return r.params().grammar; })
        .def_property_readonly("grammar_lazy", [](const chat_render & r) { return r.params().grammar_lazy; })
        .def_property_readonly("grammar_triggers", &chat_render::triggers)
        .def_property_readonly("preserved_tokens", [](const chat_render & r) { return r.params().preserved_tokens; })
        .def_property_readonly("additional_stops", [](const chat_render & r) { return r.params().additional_stops; })
        .def_property_readonly("generation_prompt", [](const chat_render & r) { return r.params().generation_prompt; })
        .def_property_readonly("format", [](const chat_render & r) {
            return std::string(common_chat_format_name(r.params().format));
        })
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

    m.def("json_schema_to_grammar", &schema_to_grammar, py::arg("schema"),
          "GBNF text for a JSON schema (given as JSON text).");
}

} // namespace rewire
