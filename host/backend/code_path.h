/* code_path.h - which code path a backend's ops take on this machine, in words, for what
 * records it (the provenance record of a trained LoRA, train/provenance.h) and what compares it
 * (danlu verify --reproduce: bit-identical results are expected on the same path only). */
#ifndef DANLU_BACKEND_CODE_PATH_H
#define DANLU_BACKEND_CODE_PATH_H

#ifdef __cplusplus
extern "C" {
#endif

/* The instruction-set path of backend `backend` ("cpu": the CPU ISA core/cpu_isa.h picks now,
 * "avx512", "avx2" or "generic", so DANLU_CPU_ISA counts); "" for a backend without one. */
const char *dl_code_path_isa(const char *backend);

#ifdef __cplusplus
}
#endif
#endif
