/* fuzz_safetensors.c - libFuzzer target for the safetensors reader: any byte string must parse
 * or be refused with a message, never crash, leak or read out of bounds. Built and run for a
 * bounded time by scripts/test.sh (clang -fsanitize=fuzzer,address,undefined). */
#include "core/error.h"
#include "io/safetensors.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* copy into an exact-size heap buffer so ASan sees reads past the end */
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf) return 0;
    memcpy(buf, data, size);
    dl_st_file f;
    memset(&f, 0, sizeof f);
    if (dl_st_parse(&f, buf, size, "fuzz") == DL_OK) {
        volatile uint64_t sum = 0; /* touch every tensor's bytes through the parsed offsets */
        for (int i = 0; i < f.n_tensors; i++) {
            const uint8_t *p = f.tensors[i].data;
            for (uint64_t k = 0; k < f.tensors[i].end - f.tensors[i].begin; k++) sum += p[k];
            float tmp[16];
            if (dl_st_numel(&f.tensors[i]) <= 16) dl_st_read_f32(&f, &f.tensors[i], tmp);
        }
        for (int i = 0; i < f.n_meta; i++) sum += strlen(f.meta_keys[i]) + strlen(f.meta_vals[i]);
        (void)dl_st_find(&f, "a");
        (void)dl_st_meta(&f, "k");
    } else if (dl_error_msg()[0] == 0) {
        abort(); /* every refusal carries a message */
    }
    dl_error_clear();
    dl_st_close(&f);
    free(buf);
    return 0;
}
