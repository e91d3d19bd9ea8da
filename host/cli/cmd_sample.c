/* cmd_sample.c - `danlu sample`: txt2img / img2img to PNG files with A1111's parameters chunk. */
#include "cli/commands.h"
#include "cli/sample_args.h"
#include "core/clock.h"
#include "core/error.h"
#include "sample/infotext.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int dl_sample_optsets(dl_optset *sets)
{
    sets[0] = dl_sa_optset(NULL);
    sets[1] = (dl_optset){dl_opt_help_table, 1, NULL, 0, NULL};
    return 2;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: danlu sample --model PATH --prompt TEXT [options]\n"
               "  Text-to-image (or image-to-image with --init-image) on the CPU, numerically as diffusers.\n"
               "  Writes OUT_DIR/NNNNN-SEED.png with A1111's \"parameters\" text chunk.\n");
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    dl_opt_usage(f, sets, dl_sample_optsets(sets));
}

static void progress(void *user, int call, int total)
{
    const int *quiet = user;
    if (!*quiet) fprintf(stderr, "\r  step %d/%d", call, total);
    if (!*quiet && call == total) fprintf(stderr, "\n");
}

/* Start hashing a single-file model on a thread (A1111's model hash: the file's SHA-256), from
 * the hash cache when it knows the file; 0 when there is nothing to hash (a diffusers folder). */
static int start_model_hash(const dl_sample_args *a, dl_hash_job *job)
{
    struct stat st;
    if (stat(a->model, &st) != 0 || !S_ISREG(st.st_mode)) return 0;
    return dl_hash_job_start(job, &a->hash_cache, a->model, 0, UINT64_MAX) == DL_OK;
}

int dl_cmd_sample(int argc, char **argv, FILE *out)
{
    dl_sample_args a;
    dl_sa_defaults(&a, "sample");
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    int nsets = dl_sample_optsets(sets);
    sets[0].obj = &a;
    int npos, pr = dl_opt_parse_argv("sample", sets, nsets, argc, argv, NULL, 0, &npos, usage, out);
    if (pr) return pr < 0 ? 0 : pr;
    if (dl_sa_finish(&a) != 0) {
        dl_sa_free(&a);
        return 1;
    }
    int rc = 1, B = a.batch_size;
    dl_ctx ctx = {0};
    dl_sd *sd = NULL;
    float *imgs = NULL;
    uint8_t *px = NULL;
    char hash[11], *hashp = NULL;
    dl_hash_job job;
    dl_phases ph;
    dl_phases_init(&ph);
    if (a.verbose) a.gp.phases = &ph;
    int hashing = start_model_hash(&a, &job); /* overlaps loading and sampling */
    if (dl_cli_ctx_init(&ctx, "sample", a.threads, a.backend) != 0) goto done;
    double t0 = dl_now_seconds();
    if (dl_sa_open_model(&a, &ctx, &sd, a.n_loras > 0) != 0) goto done;
    dl_phases_add(&ph, "load", dl_now_seconds() - t0);
    t0 = dl_now_seconds();
    if (dl_sa_merge(&a, sd, a.loras, a.n_loras) != 0) goto done;
    if (a.n_loras) dl_phases_add(&ph, "LoRA merge", dl_now_seconds() - t0);
    if (dl_sa_mkdir(a.out_dir) != 0) goto done;
    size_t npx = (size_t)a.gp.width * a.gp.height * 3;
    imgs = malloc(sizeof(float) * npx * B);
    px = malloc(npx);
    if (!imgs || !px) {
        fprintf(stderr, "danlu sample: out of memory\n");
        goto done;
    }
    int index = dl_sa_next_index(a.out_dir, a.overwrite);
    for (int bc = 0; bc < a.batch_count; bc++) {
        uint64_t seeds[64];
        for (int b = 0; b < B; b++) seeds[b] = (uint64_t)a.seed + (uint64_t)(bc * B + b);
        if (!a.quiet) fprintf(stderr, "danlu sample: batch %d/%d, seed %llu\n", bc + 1, a.batch_count, (unsigned long long)seeds[0]);
        if (dl_pipeline_generate(sd, &a.gp, B, seeds, a.seed_mode, imgs, NULL, progress, &a.quiet) != DL_OK) {
            fprintf(stderr, "danlu sample: %s\n", dl_error_msg());
            goto done;
        }
        for (int b = 0; b < B; b++) {
            /* batch mode: every image of the batch comes from seeds[0]'s generator */
            uint64_t seed = a.seed_mode == DL_SEED_BATCH ? seeds[0] : seeds[b];
            if (hashing) { /* the model hash is first needed here */
                t0 = dl_now_seconds();
                char hex[65];
                int hit = 0;
                if (dl_hash_job_wait(&job, hex, &hit) == DL_OK) {
                    memcpy(hash, hex, 10);
                    hash[10] = 0;
                    hashp = hash;
                } else if (!a.quiet) {
                    fprintf(stderr, "danlu sample: warning: no model hash in the PNG: %s\n", dl_error_msg());
                }
                hashing = 0;
                dl_phases_add(&ph, hit ? "hash wait (cached)" : "hash wait", dl_now_seconds() - t0);
            }
            t0 = dl_now_seconds();
            dl_pipeline_to_u8(imgs + npx * b, (int64_t)npx, px);
            dl_image im = {a.gp.width, a.gp.height, px};
            char *info = dl_sa_infotext(&a, a.prompt, a.gp.cfg_scale, seed, a.loras, a.n_loras, hashp);
            char *path = malloc(strlen(a.out_dir) + 48);
            if (!info || !path) {
                free(info);
                free(path);
                fprintf(stderr, "danlu sample: out of memory\n");
                goto done;
            }
            sprintf(path, "%s/%05d-%llu.png", a.out_dir, index++, (unsigned long long)seed);
            struct stat st;
            if (!a.overwrite && stat(path, &st) == 0) {
                fprintf(stderr, "danlu sample: %s exists (use --overwrite)\n", path);
                free(info);
                free(path);
                goto done;
            }
            const char *text[2] = {"parameters", info};
            int ok = dl_png_save(path, &im, text, 1) == DL_OK;
            dl_phases_add(&ph, "save", dl_now_seconds() - t0);
            if (ok) fprintf(out, "%s\n", path);
            else fprintf(stderr, "danlu sample: %s\n", dl_error_msg());
            free(info);
            free(path);
            if (!ok) goto done;
        }
    }
    rc = 0;
    if (a.verbose) dl_phases_print(&ph, stderr, "sample");
done:
    if (hashing) dl_hash_job_cancel(&job);
    free(imgs);
    free(px);
    dl_sd_close(sd);
    if (ctx.pool) dl_ctx_free(&ctx);
    dl_sa_free(&a);
    return rc;
}
