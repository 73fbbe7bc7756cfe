// llama-rewire: GGML_ABORT inside the llama library, as an exception (see llama-rewire-abort.h).
#include "llama-rewire-abort.h"
#include "llama-rewire.h"

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>

static thread_local std::string g_rewire_last_abort;

void llama_rewire_abort(const char * file, int line, const char * fmt, ...) {
    char msg[1024];
    va_list args;
    va_start(args, fmt);
    std::vsnprintf(msg, sizeof(msg), fmt, args);
    va_end(args);
    const char * base = std::strrchr(file, '/');
    std::string what = std::string(base ? base + 1 : file) + ":" + std::to_string(line) + ": " + msg;
    g_rewire_last_abort = what;
    throw std::runtime_error(what);
}

const char * llama_rewire_last_abort(void) {
    return g_rewire_last_abort.empty() ? nullptr : g_rewire_last_abort.c_str();
}

void llama_rewire_clear_abort(void) {
    g_rewire_last_abort.clear();
}
