/* code_path.c - the code path of a backend on this machine (code_path.h). */
#include "backend/code_path.h"

#include "core/cpu_isa.h"

#include <string.h>

const char *dl_code_path_isa(const char *backend)
{
    if (!backend || !strcmp(backend, "cpu")) return dl_isa_name(dl_cpu_isa());
    return "";
}
