// ggml's dynamically loaded backends, in the portable build: the CPU backend for each instruction-set level
// (and RPC, and a GPU backend where one was built) are modules next to _core, and none is registered
// until one is loaded. Which modules to load is policy, in llama_rewire/_backends.py; these are the two
// primitives it needs. In the native build (everything static) there is nothing to load.
#include "core.h"

#include "ggml-backend.h"

#include <stdexcept>
#include <string>

#ifdef _WIN32
#    define WIN32_LEAN_AND_MEAN
#    include <windows.h>
#else
#    include <dlfcn.h>
#endif

namespace rewire {

#ifdef LLAMA_REWIRE_BACKEND_DL
// what a backend module exports as ggml_backend_score (ggml-backend-impl.h, not a public header)
using backend_score_fn = int (*)(void);

// The score a module's ggml_backend_score gives this machine: 0 where it cannot run here (its
// instructions are missing), else higher for a better match. The module is unloaded again. As in ggml's
// own loader, this runs only the module's score function, which ggml compiles for the baseline.
static int backend_score(const std::string & path) {
#ifdef _WIN32
    HMODULE handle = LoadLibraryA(path.c_str());
    if (handle == nullptr) {
        throw std::runtime_error("cannot load backend module " + path);
    }
    auto score = (backend_score_fn) (void *) GetProcAddress(handle, "ggml_backend_score");
    const int result = score ? score() : -1;
    FreeLibrary(handle);
#else
    void * handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
        const char * why = dlerror();
        throw std::runtime_error("cannot load backend module " + path + ": " + (why ? why : "unknown error"));
    }
    auto score = (backend_score_fn) dlsym(handle, "ggml_backend_score");
    const int result = score ? score() : -1;
    dlclose(handle);
#endif
    if (result < 0) {
        throw std::runtime_error("backend module " + path + " has no ggml_backend_score");
    }
    return result;
}

// Load one module and register its backend; returns the backend's name ("CPU", "RPC", "CUDA", ...).
static std::string backend_load(const std::string & path) {
    ggml_backend_reg_t reg = ggml_backend_load(path.c_str());
    if (reg == nullptr) {
        throw std::runtime_error("backend module " + path + " could not be loaded, or does not run on this machine");
    }
    return ggml_backend_reg_name(reg);
}
#endif

void bind_backends(py::module_ & m) {
#ifdef LLAMA_REWIRE_BACKEND_DL
    m.attr("BACKEND_DL") = true;
    m.def("backend_score", &backend_score, py::arg("path"),
          "A backend module's score on this machine (0: it cannot run here), without registering it.");
    m.def("backend_load", &backend_load, py::arg("path"), "Load a backend module and register it; its name.");
#else
    m.attr("BACKEND_DL") = false;
#endif
}

} // namespace rewire
