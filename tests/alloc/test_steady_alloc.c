/* test_steady_alloc.c - the steady-state training step allocates nothing: `danlu train` on the
 * tiny model (tests/golden/tiny_pipe) with malloc and its family counted on every thread; from
 * the end of the first epoch to the last step (before the final save) the count must not move.
 * Two configurations: (a) latents and text embeddings cached; (b) nothing cached: PNG, JPEG and
 * BMP images of several sizes over 2 buckets decoded and prepared every step with random crops
 * and flips, captions shuffled with tag dropout behind kept tokens, the text encoder trained
 * (so tokenized every step), batch 2 with gradient accumulation 2; (c) `danlu finetune` (every
 * UNet and text-encoder weight trains), latents cached, batch 2, accumulation 2, gradient
 * checkpointing; (d) SDXL (tests/golden/tiny_sdxl_pipe) as (b) (both text encoders trained, the
 * pooled embedding and each image's time ids every step), and cached (the UNet's LoRA only). Also
 * checks the counter
 * itself (the main thread and pool threads). A plain program: exit status 0 when all pass.
 * To find an allocation: DANLU_ALLOC_TRACE=1 prints the stack of every counted call, with a
 * "==== after step N" line after each step (addr2line -e danlu_alloc_test resolves offsets). */
#include "alloc_count.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "io/image.h"
#include "train/config.h"
#include "train/dataset.h"
#include "train/trainer.h"

#include <stb_image_write.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_STEPS 256

typedef struct step_log {
    int n;                    /* steps seen */
    uint64_t at[MAX_STEPS];   /* allocation count right after step i + 1 */
} step_log;

static void on_step(void *user, int step)
{
    step_log *l = user;
    if (step - 1 < MAX_STEPS) l->at[step - 1] = alloc_count_get();
    l->n = step;
    if (getenv("DANLU_ALLOC_TRACE")) {
        /* with alloc_count.c's stack tracing: mark where each step ends */
        char m[64];
        int k = snprintf(m, sizeof m, "==== after step %d\n", step);
        if (write(2, m, (size_t)k) < 0) { /* nothing to do */ }
    }
}

static int g_fail;
#define CHECK(cond, ...)                                                                                     \
    do {                                                                                                     \
        if (!(cond)) {                                                                                       \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                             \
            fprintf(stderr, __VA_ARGS__);                                                                    \
            fprintf(stderr, "\n");                                                                           \
            g_fail = 1;                                                                                      \
        }                                                                                                    \
    } while (0)

/* ---- the counter counts what it must ---- */
static void alloc_in_worker(void *arg, int64_t begin, int64_t end, int tid)
{
    (void)arg;
    (void)tid;
    for (int64_t i = begin; i < end; i++) {
        void *volatile p = malloc(16);
        free(p);
    }
}

static void check_counter(void)
{
    dl_pool *pool = dl_pool_create(2);
    alloc_count_enable(1);
    uint64_t c0 = alloc_count_get();
    void *volatile p = malloc(8);
    p = realloc(p, 64);
    free(p);
    void *q = NULL;
    CHECK(posix_memalign(&q, 64, 128) == 0, "posix_memalign failed");
    free(q);
    uint64_t c1 = alloc_count_get();
    CHECK(c1 - c0 == 3, "main thread: %llu allocations counted, 3 made", (unsigned long long)(c1 - c0));
    dl_parallel_for(pool, 64, 1, alloc_in_worker, NULL); /* 64 mallocs spread over the pool's threads */
    uint64_t c2 = alloc_count_get();
    CHECK(c2 - c1 >= 64, "pool threads: %llu allocations counted, 64 made", (unsigned long long)(c2 - c1));
    alloc_count_enable(0);
    dl_pool_destroy(pool);
    printf("counter: main thread 3/3, pool threads %llu/64\n", (unsigned long long)(c2 - c1));
}

/* ---- dataset ---- */
static char g_dir[64];

static void write_image(const char *dir, const char *name, int w, int h, int seed, const char *caption)
{
    char p[256];
    uint8_t *px = malloc((size_t)w * h * 3);
    for (int i = 0; i < w * h * 3; i++) px[i] = (uint8_t)((i * 37 + seed * 101 + (i / (w * 3)) * 13) & 255);
    snprintf(p, sizeof p, "%s/%s", dir, name);
    const char *ext = strrchr(name, '.');
    int ok;
    if (strcmp(ext, ".png") == 0) {
        dl_image img = {w, h, px};
        ok = dl_png_save(p, &img, NULL, 0) == DL_OK;
    } else if (strcmp(ext, ".jpg") == 0) {
        ok = stbi_write_jpg(p, w, h, 3, px, 90) != 0;
    } else {
        ok = stbi_write_bmp(p, w, h, 3, px) != 0;
    }
    CHECK(ok, "cannot write %s", p);
    free(px);
    snprintf(p, sizeof p, "%s/%.*s.txt", dir, (int)(ext - name), name);
    FILE *f = fopen(p, "wb");
    CHECK(f != NULL, "cannot write %s", p);
    if (f) {
        fputs(caption, f);
        fclose(f);
    }
}

/* 6 images of 6 sizes in 3 formats: squares (bucket 96x96, one upscaled) and wide ones
 * (bucket 128x64 at resolution 96, steps 32). */
static void make_dataset(void)
{
    strcpy(g_dir, "/tmp/danlu-alloc-XXXXXX");
    if (!mkdtemp(g_dir)) { perror("mkdtemp"); exit(2); }
    char d[256];
    snprintf(d, sizeof d, "%s/data", g_dir);
    mkdir(d, 0700);
    snprintf(d, sizeof d, "%s/data/1_thing", g_dir);
    mkdir(d, 0700);
    write_image(d, "a.png", 96, 96, 1, "thing, red square, small, bright, plain background");
    write_image(d, "b.jpg", 104, 104, 2, "thing, blue circle, large");
    write_image(d, "c.bmp", 80, 80, 3, "thing, green stripes, tiny, upscaled, with a much longer caption than the rest");
    write_image(d, "d.png", 128, 64, 4, "thing, wide, yellow dots");
    write_image(d, "e.jpg", 150, 74, 5, "thing, wide, purple, noisy, jpeg");
    write_image(d, "f.bmp", 136, 66, 6, "thing, wide, bitmap");
}

static void rm_rf(const char *dir)
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

/* ---- one run ---- */
static const char *g_model = "tests/golden/tiny_pipe"; /* the base model of the runs, in the source tree */

/* ft: `danlu finetune` (every UNet weight trains) instead of `danlu train` (a LoRA) */
static void run_case(const char *name, const char *src_dir, const char **extra, int epochs, int ft)
{
    char data[256], out[256], model[512], ep[16];
    snprintf(data, sizeof data, "%s/data", g_dir);
    snprintf(out, sizeof out, "%s/out-%s", g_dir, name);
    snprintf(model, sizeof model, "%s/%s", src_dir, g_model);
    snprintf(ep, sizeof ep, "%d", epochs);
    const char *a[64] = {ft ? "finetune" : "train", "--pretrained_model_name_or_path", model, "--train_data_dir",
                         data, "--output_dir", out, "--resolution", "96", "--enable_bucket", "--min_bucket_reso",
                         "64", "--max_bucket_reso", "128", "--bucket_reso_steps", "32", "--seed", "3", "--threads",
                         "2", "--max_train_epochs", ep, "--learning_rate", "1e-3", ft ? NULL : "--network_dim", "2"};
    int n = 0;
    while (a[n]) n++;
    for (int i = 0; extra[i]; i++) a[n++] = extra[i];
    a[n] = NULL;
    dl_train_config c;
    dl_train_config_defaults_for(&c, ft);
    if (dl_train_config_parse_args(&c, n, (char **)a, NULL) != DL_OK) {
        CHECK(0, "%s: config: %s", name, dl_error_msg());
        return;
    }
    step_log log = {0};
    dl_trainer_opts o = {.log = NULL, .tty = 0, .on_step = on_step, .on_step_user = &log};
    dl_train_result r;
    alloc_count_enable(1);
    uint64_t c0 = alloc_count_get();
    int rc = dl_train_run(&c, &o, &r);
    uint64_t c_end = alloc_count_get();
    alloc_count_enable(0);
    if (rc != DL_OK) {
        CHECK(0, "%s: training failed: %s", name, dl_error_msg());
        dl_train_config_free(&c);
        return;
    }
    int total = r.total_steps, spe = total / epochs;
    int ok = total % epochs == 0 && spe >= 1 && log.n == total && total <= MAX_STEPS;
    CHECK(total % epochs == 0 && spe >= 1 && log.n == total && total <= MAX_STEPS, "%s: %d steps, %d epochs, %d seen",
          name, total, epochs, log.n);
    if (ok) {
        uint64_t setup = log.at[0] - c0, first = log.at[spe - 1] - c0, steady = log.at[total - 1] - log.at[spe - 1];
        printf("%s: %d steps (%d per epoch): %llu allocations up to step 1, %llu through epoch 1, %llu in steps "
               "%d..%d, %llu in the final save and teardown\n", name, total, spe, (unsigned long long)setup,
               (unsigned long long)first, (unsigned long long)steady, spe + 1, total,
               (unsigned long long)(c_end - log.at[total - 1]));
        for (int s = spe; s < total; s++)
            if (log.at[s] != log.at[s - 1])
                printf("  step %d: %llu allocations\n", s + 1, (unsigned long long)(log.at[s] - log.at[s - 1]));
        CHECK(steady == 0, "%s: %llu heap allocations in the steady state (steps %d..%d)", name,
              (unsigned long long)steady, spe + 1, total);
    }
    for (int i = 0; i < total - r.start_step; i++) CHECK(r.losses[i] == r.losses[i], "%s: loss %d is NaN", name, i);
    dl_train_result_free(&r);
    dl_train_config_free(&c);
}

int main(int argc, char **argv)
{
    const char *src = argc > 1 ? argv[1] : DANLU_SOURCE_DIR;
    check_counter();
    make_dataset();
    static const char *cached[] = {"--cache_latents", "--network_train_unet_only", "--train_batch_size", "2", NULL};
    run_case("cached", src, cached, 3, 0);
    static const char *uncached[] = {"--random_crop", "--flip_aug", "--shuffle_caption", "--caption_tag_dropout_rate",
                                     "0.3", "--keep_tokens", "1", "--train_batch_size", "2",
                                     "--gradient_accumulation_steps", "2", "--text_encoder_lr", "1e-3", NULL};
    run_case("uncached", src, uncached, 3, 0);
    static const char *finetune[] = {"--cache_latents", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
                                     "--gradient_checkpointing", "--train_text_encoder", NULL};
    run_case("finetune", src, finetune, 3, 1);
    /* SDXL (the tiny SDXL pipeline): both text encoders trained (three passes, the pooled
     * embedding's gradient through the added embedding), the time ids of each image */
    g_model = "tests/golden/tiny_sdxl_pipe";
    static const char *xl[] = {"--random_crop", "--flip_aug", "--shuffle_caption", "--caption_tag_dropout_rate", "0.3",
                               "--keep_tokens", "1", "--train_batch_size", "2", "--gradient_accumulation_steps", "2",
                               "--text_encoder_lr", "1e-3", NULL};
    run_case("sdxl", src, xl, 3, 0);
    static const char *xl_cached[] = {"--cache_latents", "--cache_text_encoder_outputs", "--network_train_unet_only",
                                      "--train_batch_size", "2", NULL};
    run_case("sdxl-cached", src, xl_cached, 3, 0);
    rm_rf(g_dir);
    printf(g_fail ? "test_steady_alloc: FAILED\n" : "test_steady_alloc: passed\n");
    return g_fail;
}
