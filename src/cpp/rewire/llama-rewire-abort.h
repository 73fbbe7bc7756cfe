// llama-rewire: inside the llama library, a failed GGML_ASSERT / GGML_ABORT throws instead of aborting.
//
// This header is force-included into every C++ source of the llama target (CMakeLists.txt): llama.cpp's
// own code asserts on values that come from the user, most of all the metadata of a GGUF file (a layer
// count of 0, a head count that does not divide the width...), and an assert kills the host process.
// Thrown as a std::runtime_error, it reaches the try/catch that already surrounds model loading
// (llama_model_load returns an error, Llama raises ModelLoadError with the message), or the binding that
// called into llama.cpp (a RuntimeError). ggml's C code (tensor ops, the CPU backend) still aborts.
#pragma once

#ifdef __cplusplus

#include "ggml.h"

[[noreturn]] void llama_rewire_abort(const char * file, int line, const char * fmt, ...) GGML_ATTRIBUTE_FORMAT(3, 4);

#undef GGML_ABORT
#define GGML_ABORT(...) llama_rewire_abort(__FILE__, __LINE__, __VA_ARGS__)

#endif
