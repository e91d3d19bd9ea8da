/* test_gpu_kernels.cpp - the kernel cases of tests/kernels/kcase_*.h on a real GPU against the
 * CPU reference: the emulator's tiny shapes plus SD-sized ones, LoRA with and without cuBLAS, the
 * element-wise / normalisation / loss / optimiser kernels of kernels/ops.cu.
 * Prints one line per check and a summary; exits 1 if any check fails. `--quick` runs only the
 * tiny shapes (for compute-sanitizer). Built only when CUDA is on (tests/gpu/CMakeLists.txt). */
#define KC_HAVE_ATTENTION_TC 1 // kernels/attention_tc.cu is part of danlu_kernels on a GPU
#include "kcase_attention.h"
#include "kcase_attention_mma.h"
#include "kcase_groupnorm.h"
#include "kcase_lora.h"
#include "kcase_ops.h"

#include "core/error.h"

#include <cublas_v2.h>

typedef struct gpu_report {
    const char *name;
    int printed_fail;
} gpu_report;

static void report(void *user, const char *label, double err, double tol)
{
    gpu_report *r = (gpu_report *)user;
    int ok = err <= tol;
    printf("%-4s %-34s %-28s err %-10.3g tol %.0e\n", ok ? "ok" : "FAIL", r->name, label, err,
           tol);
}

static const char *dtn(dl_dtype t) { return t == DL_BF16 ? "bf16" : "f32"; }

#define NELEM(a) (sizeof(a) / sizeof *(a))

/* The ops.cu cases: the emulator's small shapes (tests/kernels/test_kernels_ops.cpp) or SD1.5-sized
 * ones (big), in both storage types where the op has one. */
static void run_ops(kc_env *e, gpu_report *rep, int big)
{
    const dl_dtype dts[2] = {DL_F32, DL_BF16};
    for (int k = 0; k < 2; k++) {
        const dl_dtype dt = dts[k];
        rep->name = big ? "ops big" : "ops small";
        for (int act = 0; act < DL_ACT_COUNT; act++) {
            const kc_act_case small[] = {{act, 4099, dt, 11u + act, 0, 0}, {act, 37, dt, 21u + act, 1, 0},
                                         {act, 1030, dt, 31u + act, 0, 1}},
                              large[] = {{act, 2 * 4096 * 1280 + 3, dt, 11u + act, 0, 0},
                                         {act, 4096 * 320, dt, 12u + act, 1, 1}};
            for (size_t i = 0; i < (big ? NELEM(large) : NELEM(small)); i++) kc_run_act(e, big ? &large[i] : &small[i]);
        }
        const kc_geglu_case gs[] = {{6, 1280, dt, 51, 0}, {5, 13, dt, 52, 0}, {3, 16, dt, 53, 1}},
                            gb[] = {{2 * 4096, 1280, dt, 51, 0}, {1000, 1279, dt, 52, 1}};
        for (size_t i = 0; i < (big ? NELEM(gb) : NELEM(gs)); i++) kc_run_geglu(e, big ? &gb[i] : &gs[i]);
        const kc_ew_case es[] = {{20483, dt, 61, 0}, {1001, dt, 62, 1}, {1, dt, 63, 0}},
                         eb[] = {{2 * 64 * 64 * 320 + 5, dt, 61, 0}, {1 << 20, dt, 62, 1}};
        for (size_t i = 0; i < (big ? NELEM(eb) : NELEM(es)); i++) kc_run_ew(e, big ? &eb[i] : &es[i]);
        const kc_bcast_case bs[] = {{2, 64, 320, 0, dt, 71, 0}, {2, 64, 1280, 1, dt, 72, 0}, {3, 7, 37, 1, dt, 73, 1}},
                            bb[] = {{2, 4096, 320, 1, dt, 71, 0}, {2, 1024, 640, 0, dt, 72, 0}, {4, 64, 1280, 1, dt, 73, 1}};
        for (size_t i = 0; i < (big ? NELEM(bb) : NELEM(bs)); i++) kc_run_bcast(e, big ? &bb[i] : &bs[i]);
        const kc_concat_case cs[] = {{64, 640, 320, dt, 81, 0}, {13, 5, 3, dt, 83, 0}, {9, 8, 16, dt, 84, 1}},
                             cb[] = {{2 * 1024, 640, 640, dt, 81, 0}, {2 * 4096, 320, 640, dt, 82, 0},
                                     {2 * 256, 1280, 1280, dt, 83, 1}};
        for (size_t i = 0; i < (big ? NELEM(cb) : NELEM(cs)); i++) kc_run_concat(e, big ? &cb[i] : &cs[i]);
        const kc_spatial_case ss[] = {{1, 4, 4, 1280, 0, 0, 1, 1, dt, 91, 0}, {1, 5, 3, 7, 1, 2, 0, 3, dt, 93, 0},
                                      {2, 3, 5, 16, 2, 0, 1, 0, dt, 94, 1}},
                              sb[] = {{2, 32, 32, 640, 1, 1, 1, 1, dt, 91, 0}, {1, 256, 256, 128, 0, 0, 1, 1, dt, 92, 0},
                                      {2, 16, 16, 1280, 1, 1, 1, 1, dt, 93, 1}};
        for (size_t i = 0; i < (big ? NELEM(sb) : NELEM(ss)); i++) kc_run_spatial(e, big ? &sb[i] : &ss[i]);
        const kc_temb_case ts[] = {{4, 320, 1, 0.0f, 1.0f, 10000.0f, dt}, {3, 7, 0, 1.0f, 2.0f, 1000.0f, dt}},
                           tb[] = {{64, 320, 1, 0.0f, 1.0f, 10000.0f, dt}, {16, 1281, 0, 1.0f, 1.0f, 10000.0f, dt}};
        for (size_t i = 0; i < (big ? NELEM(tb) : NELEM(ts)); i++) kc_run_temb(e, big ? &tb[i] : &ts[i]);
        const kc_embed_case ms[] = {{2, 77, 768, 1000, dt, 101, 0}, {3, 5, 37, 11, dt, 103, 1}},
                            mb[] = {{8, 77, 768, 49408, dt, 101, 0}, {4, 77, 1024, 49408, dt, 102, 1}};
        for (size_t i = 0; i < (big ? NELEM(mb) : NELEM(ms)); i++) kc_run_embed(e, big ? &mb[i] : &ms[i]);
        const kc_ln_case ls[] = {{154, 768, 1, 0, dt, 111, 0.0f}, {5, 37, 0, 0, dt, 113, 5.0f},
                                 {6, 1280, 1, 1, dt, 114, 1.0f}},
                          lb[] = {{2 * 4096, 320, 1, 0, dt, 111, 0.0f}, {8 * 77, 768, 1, 1, dt, 112, 1.0f},
                                  {2 * 256, 1280, 0, 0, dt, 113, 3.0f}};
        for (size_t i = 0; i < (big ? NELEM(lb) : NELEM(ls)); i++) kc_run_layernorm(e, big ? &lb[i] : &ls[i]);
        const kc_mse_case qs[] = {{2, 4 * 64 * 64, 1, 0, dt, 131, 0}, {3, 37, 0, 1, dt, 132, 1}},
                          qb[] = {{8, 4 * 64 * 64, 1, 0, dt, 131, 0}, {4, 4 * 128 * 128, 0, 1, dt, 132, 1}};
        for (size_t i = 0; i < (big ? NELEM(qb) : NELEM(qs)); i++) kc_run_mse(e, big ? &qb[i] : &qs[i]);
    }
    const kc_softmax_case fs[] = {{2 * 4 * 77, 77, 0.125f, 77, 0, 121}, {37, 200, 0.125f, 0, 0, 122},
                                  {6, 1000, 0.5f, 0, 1, 124}},
                          fb[] = {{8 * 12 * 77, 77, 0.125f, 77, 0, 121}, {2 * 8 * 4096, 77, 0.125f, 0, 1, 122},
                                  {64, 4096, 0.125f, 0, 0, 123}};
    for (size_t i = 0; i < (big ? NELEM(fb) : NELEM(fs)); i++) kc_run_softmax(e, big ? &fb[i] : &fs[i]);
    const kc_optim_case os[] = {{100003, 141, 0}, {37, 142, 1}}, ob[] = {{8000003, 141, 0}, {1000001, 142, 1}};
    for (size_t i = 0; i < (big ? NELEM(ob) : NELEM(os)); i++) kc_run_optim(e, big ? &ob[i] : &os[i]);
}

int main(int argc, char **argv)
{
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0;
    dl_ctx ctx;
    if (dl_ctx_init(&ctx, 0) != DL_OK) return 2;
    int dev = 0;
    cudaDeviceProp prop;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&prop, dev) != cudaSuccess) {
        fprintf(stderr, "no CUDA device\n");
        return 2;
    }
    printf("device: %s (sm_%d%d)\n", prop.name, prop.major, prop.minor);
    cublasHandle_t blas;
    if (cublasCreate(&blas) != CUBLAS_STATUS_SUCCESS) return 2;

    kc_env e;
    memset(&e, 0, sizeof e);
    e.cpu = &ctx;
    e.report = report;
    cudaStreamCreate(&e.stream);
    gpu_report rep = {"", 0};
    e.user = &rep;
    char name[128];

    // {N, H, Tq, Tk, d, dtype, seed}
    const kc_attention_case att_small[] = {
        {1, 2, 37, 37, 40, DL_F32, 11},   {2, 1, 20, 77, 64, DL_F32, 12},
        {1, 1, 33, 45, 80, DL_F32, 13},   {1, 1, 19, 40, 160, DL_F32, 14},
        {1, 1, 5, 3, 40, DL_F32, 15},     {1, 2, 24, 77, 40, DL_BF16, 16},
        {1, 1, 9, 33, 160, DL_BF16, 17},  {1, 1, 40, 70, 80, DL_BF16, 18},
        {2, 1, 17, 33, 64, DL_BF16, 19},
    };
    const kc_attention_case att_big[] = {
        {2, 8, 1024, 1024, 40, DL_F32, 41},  {2, 8, 1000, 77, 40, DL_BF16, 42},
        {1, 5, 4096, 154, 64, DL_BF16, 43},  {2, 8, 1024, 231, 80, DL_F32, 44},
        {1, 2, 1024, 1024, 160, DL_BF16, 45}, {1, 4, 2500, 2500, 64, DL_F32, 46},
        {1, 8, 4096, 4096, 64, DL_BF16, 47},
    };
    // tensor-core forward (sm_80+), {N, H, Tq, Tk, d, pad, scale_mul, seed}: the emulator's
    // shapes, then SD1.5's self- (4096 tokens) and cross-attention (77 keys) per head dim
    const kc_attention_mma_case mma_small[] = {
        {1, 2, 130, 130, 40, 0, 1.0f, 101}, {2, 2, 77, 77, 40, 8, 1.0f, 102},
        {1, 3, 40, 77, 64, 8, 1.0f, 103},   {2, 1, 20, 300, 64, 0, 1.0f, 104},
        {1, 2, 70, 100, 80, 16, 1.0f, 105}, {2, 1, 70, 77, 160, 8, 1.0f, 106},
        {1, 2, 65, 100, 160, 0, 1.0f, 107}, {1, 1, 5, 3, 40, 0, 1.0f, 108},
        {1, 1, 40, 150, 64, 0, -3.0f, 109}, {1, 2, 50, 77, 40, 3, 1.0f, 110},
    };
    const kc_attention_mma_case mma_big[] = {
        {2, 8, 4096, 4096, 40, 0, 1.0f, 141}, {2, 8, 4096, 77, 40, 0, 1.0f, 142},
        {2, 8, 1024, 1024, 80, 0, 1.0f, 143}, {2, 8, 1024, 77, 80, 0, 1.0f, 144},
        {2, 8, 256, 256, 160, 0, 1.0f, 145}, {2, 8, 256, 77, 160, 0, 1.0f, 146},
        {1, 8, 4096, 4096, 64, 0, 1.0f, 147}, {1, 5, 1000, 1000, 40, 5, 1.0f, 148},
    };
    // {N, HW, C, G, silu, dtype, seed, offset, misalign}; fp32 cases with few groups have a non-zero
    // offset: a relative error of group means near 0 says nothing (see test_kernels_groupnorm.cpp)
    const kc_groupnorm_case gn_small[] = {
        {2, 37, 64, 32, 0, DL_F32, 21, 0.0f, 0},   {1, 300, 160, 32, 1, DL_F32, 22, 3.0f, 0},
        {2, 45, 36, 4, 0, DL_F32, 23, 0.0f, 0},    {1, 7, 6, 2, 1, DL_F32, 24, -1.0f, 0},
        {2, 50, 96, 32, 1, DL_BF16, 25, 0.5f, 0},  {1, 129, 64, 32, 0, DL_BF16, 26, 0.0f, 0},
        {1, 33000, 8, 2, 1, DL_F32, 27, 1.0f, 0},  {2, 256, 320, 32, 1, DL_F32, 28, 1.0f, 1},
    };
    const kc_groupnorm_case gn_big[] = {
        {2, 4096, 320, 32, 1, DL_F32, 51, 1.0f, 0},   {1, 65536, 128, 32, 1, DL_BF16, 52, 1.0f, 0},
        {2, 1024, 640, 32, 0, DL_BF16, 53, 0.0f, 0},  {2, 64, 2560, 32, 1, DL_F32, 54, 1.0f, 0},
        {1, 4096, 320, 32, 1, DL_BF16, 55, 0.0f, 0},  {1, 256, 1280, 32, 0, DL_F32, 56, 1.0f, 0},
    };
    // {M, in, out, rank, s, bias, conv, dtype, seed}
    const kc_lora_case lora_small[] = {
        {37, 40, 48, 4, 0.5f, 1, 0, DL_F32, 31},     {19, 33, 17, 1, 2.0f, 0, 0, DL_F32, 32},
        {65, 70, 130, 128, 0.125f, 1, 1, DL_F32, 33}, {40, 64, 80, 16, 1.0f, 1, 0, DL_BF16, 34},
        {33, 20, 36, 8, 0.75f, 0, 1, DL_BF16, 35},   {1100, 24, 20, 4, 1.5f, 1, 0, DL_F32, 36},
        {1030, 16, 40, 2, 1.0f, 0, 1, DL_BF16, 37},
    };
    const kc_lora_case lora_big[] = {
        {4096, 320, 320, 16, 1.0f, 1, 0, DL_F32, 61},  {4096, 640, 640, 128, 0.5f, 0, 0, DL_BF16, 62},
        {1024, 768, 320, 4, 1.0f, 1, 0, DL_BF16, 63},  {8192, 1280, 1280, 32, 0.25f, 1, 1, DL_BF16, 64},
    };

    for (int big = 0; big <= !quick; big++) {
        size_t na = big ? sizeof att_big / sizeof *att_big : sizeof att_small / sizeof *att_small;
        for (size_t i = 0; i < na; i++) {
            const kc_attention_case *c = big ? &att_big[i] : &att_small[i];
            snprintf(name, sizeof name, "attn %s N%d H%d %dx%d d%d", dtn(c->dt), c->N, c->H, c->Tq,
                     c->Tk, c->d);
            rep.name = name;
            kc_run_attention(&e, c);
        }
        size_t nm = big ? sizeof mma_big / sizeof *mma_big : sizeof mma_small / sizeof *mma_small;
        if (prop.major < 8) nm = 0; // mma.sync bf16, ldmatrix, cp.async
        for (size_t i = 0; i < nm; i++) {
            const kc_attention_mma_case *c = big ? &mma_big[i] : &mma_small[i];
            snprintf(name, sizeof name, "attn mma N%d H%d %dx%d d%d pad %d", c->N, c->H, c->Tq, c->Tk,
                     c->d, c->pad);
            rep.name = name;
            kc_run_attention_mma(&e, c, NULL);
            for (int det = 0; det <= (big && i > 0 ? 0 : 1); det++) { // CPU references are slow
                snprintf(name, sizeof name, "attn mma bwd%s N%d H%d %dx%d d%d pad %d", det ? " det" : "",
                         c->N, c->H, c->Tq, c->Tk, c->d, c->pad);
                kc_run_attention_mma_backward(&e, c, det);
            }
        }
        size_t ng = big ? sizeof gn_big / sizeof *gn_big : sizeof gn_small / sizeof *gn_small;
        for (size_t i = 0; i < ng; i++) {
            const kc_groupnorm_case *c = big ? &gn_big[i] : &gn_small[i];
            snprintf(name, sizeof name, "gn %s %dx%dx%d g%d%s%s", dtn(c->dt), c->N, c->HW, c->C,
                     c->G, c->silu ? " silu" : "", c->misalign ? " misaligned" : "");
            rep.name = name;
            kc_run_groupnorm(&e, c);
        }
        size_t nl = big ? sizeof lora_big / sizeof *lora_big : sizeof lora_small / sizeof *lora_small;
        for (size_t i = 0; i < nl; i++) {
            const kc_lora_case *c = big ? &lora_big[i] : &lora_small[i];
            for (int useblas = 0; useblas <= 1; useblas++) {
                e.blas = useblas ? (struct cublasContext *)blas : NULL;
                snprintf(name, sizeof name, "lora %s %dx%d->%d r%d%s%s", dtn(c->dt), c->M, c->in,
                         c->out, c->rank, c->conv ? " conv" : "", useblas ? " cublas" : "");
                rep.name = name;
                kc_run_lora(&e, c);
            }
            e.blas = NULL;
        }
        run_ops(&e, &rep, big);
    }
    printf("summary: %d checks, %d failed\n", e.checks, e.failures);
    cublasDestroy(blas);
    cudaStreamDestroy(e.stream);
    dl_ctx_free(&ctx);
    return e.failures ? 1 : 0;
}
