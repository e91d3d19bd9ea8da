/* cmd_verify.c - `danlu verify FILE`: the provenance record of a LoRA danlu trained
 * (train/provenance.h, docs/provenance.md): print it, match a folder of images against it
 * (--dataset DIR), or retrain from it and compare (--reproduce). Exit status as diff(1): 0 the
 * same, 1 different, 2 trouble (usage, unreadable file, no record, a refused retraining). */
#include "cli/commands.h"
#include "core/cpu_isa.h"
#include "core/error.h"
#include "core/threadpool.h"
#include "train/provenance.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    const char *dataset, *model, *work_dir;
    int reproduce;
} verify_args;

static void verify_defaults(void *obj)
{
    memset(obj, 0, sizeof(verify_args));
}

#define VA(f) offsetof(verify_args, f)

static const dl_opt k_verify_opts[] = {
    {"--dataset", NULL, DL_OPT_STR, VA(dataset), "DIR", "none", 0, 0, NULL, NULL, "options",
     "say which images of DIR (sd-scripts layout) were in the training set and which recorded ones are missing; "
     "with --reproduce: train on DIR instead of the recorded train_data_dir"},
    {"--reproduce", NULL, DL_OPT_FLAG, VA(reproduce), NULL, "off", 0, 0, NULL, NULL, "options",
     "retrain from the record (dataset and base model checked first) and compare the result with FILE"},
    {"--model", NULL, DL_OPT_STR, VA(model), "PATH", "the recorded pretrained_model_name_or_path", 0, 0, NULL, NULL,
     "options", "--reproduce: the base model (checked against the record's hashes)"},
    {"--work-dir", NULL, DL_OPT_STR, VA(work_dir), "DIR", "a temporary folder, removed", 0, 0, NULL, NULL, "options",
     "--reproduce: retrain into DIR and keep what it writes"},
};

int dl_verify_optsets(dl_optset *sets)
{
    sets[0] = (dl_optset){k_verify_opts, (int)(sizeof k_verify_opts / sizeof *k_verify_opts), NULL,
                          sizeof(verify_args), verify_defaults};
    sets[1] = (dl_optset){dl_opt_help_table, 1, NULL, 0, NULL};
    return 2;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: danlu verify FILE.safetensors [--dataset DIR] [--reproduce [--model PATH] [--work-dir DIR]]\n"
               "  Reads the provenance record danlu writes into every LoRA it trains (docs/provenance.md).\n"
               "  Exit status: 0 the folder (or the retrained LoRA) matches the record, 1 it differs, 2 trouble.\n");
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    dl_opt_usage(f, sets, dl_verify_optsets(sets));
}

static void print_record(FILE *out, const char *file, const dl_provenance *p)
{
    fprintf(out, "%s: trained by danlu %s on %s/%s with %d threads, seed %llu, %d steps (epoch %d), %d images\n", file,
            p->danlu, p->backend, p->isa, p->threads, (unsigned long long)p->seed, p->steps, p->epoch, p->n_items);
    for (int i = 0; i < p->n_model; i++)
        fprintf(out, "  base model %s: %s\n", p->model[i].name,
                p->model[i].sha256[0] ? p->model[i].sha256 : "(no hash)");
}

/* --dataset DIR: 0 the same, 1 different, 2 trouble. */
static int verify_dataset(FILE *out, const char *file, const dl_provenance *rec, const char *config_json,
                          const char *dir)
{
    dl_train_config c;
    if (dl_prov_load_config(&c, config_json, file) != DL_OK) {
        fprintf(stderr, "danlu verify: %s\n", dl_error_msg());
        return 2;
    }
    dl_dataset ds;
    int rc = dl_prov_scan(&ds, dir, &c, stderr);
    dl_train_config_free(&c);
    if (rc != DL_OK) {
        fprintf(stderr, "danlu verify: %s\n", dl_error_msg());
        return 2;
    }
    dl_pool *pool = dl_pool_create(0);
    dl_prov_item *items = NULL;
    dl_prov_report rep = {0};
    rc = dl_prov_hash_dataset(&ds, pool, &items);
    dl_pool_destroy(pool);
    if (rc == DL_OK) rc = dl_prov_compare(rec, items, ds.n_items, &rep);
    if (rc != DL_OK) {
        fprintf(stderr, "danlu verify: %s\n", dl_error_msg());
        dl_prov_items_free(items, ds.n_items);
        dl_dataset_free(&ds);
        return 2;
    }
    for (int i = 0; i < rep.n; i++) {
        const dl_prov_match *m = &rep.m[i];
        fprintf(out, "  %-36s %s", dl_prov_status_text(m->status), m->path);
        if (m->record >= 0 && strcmp(rec->items[m->record].path, m->path))
            fprintf(out, " (recorded as %s)", rec->items[m->record].path);
        fprintf(out, "%s\n", m->caption_changed ? "; its caption changed" : "");
    }
    for (int k = 0; k < rep.n_missing; k++)
        fprintf(out, "  %-36s %s\n", "missing (recorded, not in DIR)", rec->items[rep.missing[k]].path);
    fprintf(out, "%s: %d images; %d in the training set (%d at another path, %d re-encoded), %d not in it; "
                 "%d of the %d recorded missing; %d caption(s) changed: %s\n",
            dir, rep.n, rep.n_in + rep.n_moved + rep.n_reencoded, rep.n_moved, rep.n_reencoded, rep.n_not_in,
            rep.n_missing, rec->n_items, rep.n_caption_changed,
            rep.exact ? "the same as the training set" : "differs from the training set");
    int exact = rep.exact;
    dl_prov_report_free(&rep);
    dl_prov_items_free(items, ds.n_items);
    dl_dataset_free(&ds);
    return exact ? 0 : 1;
}

static int verify_reproduce(FILE *out, const char *file, const verify_args *va)
{
    dl_prov_repro_opts o = {.dataset = va->dataset, .model = va->model, .work_dir = va->work_dir, .log = out};
    dl_prov_repro r;
    if (dl_prov_reproduce(file, &o, &r) != DL_OK) {
        fprintf(stderr, "danlu verify: %s\n", dl_error_msg());
        return 2;
    }
    int rc;
    if (r.identical) {
        fprintf(out, "exact match: all %d tensors bit-identical (code path %s%s)\n", r.n_tensors, r.path_now,
                r.same_path ? ", as recorded" : "");
        rc = 0;
    } else {
        fprintf(out, "not identical: %d of %d tensors differ; all tensors together: relative L2 %.3e (worst single "
                     "tensor %s: %.3e)\n", r.n_differ, r.n_tensors, r.rel_l2, r.worst, r.worst_rel);
        if (r.same_path) {
            fprintf(out, "the code path is the recorded one (%s): a retraining should be bit-identical: differs\n",
                    r.path_now);
            rc = 1;
        } else {
            fprintf(out, "code path %s, recorded %s: %s the bound %.0e for another code path\n", r.path_now, r.path_rec,
                    r.within_bound ? "within" : "beyond", DL_PROV_REPRO_BOUND);
            rc = r.within_bound ? 0 : 1;
        }
    }
    if (va->work_dir && r.retrained) fprintf(out, "retrained file: %s\n", r.retrained);
    dl_prov_repro_free(&r);
    return rc;
}

int dl_cmd_verify(int argc, char **argv, FILE *out)
{
    verify_args va;
    verify_defaults(&va);
    dl_optset sets[DL_CMD_MAX_OPTSETS];
    int nsets = dl_verify_optsets(sets);
    sets[0].obj = &va;
    const char *file = NULL;
    int npos, pr = dl_opt_parse_argv("verify", sets, nsets, argc, argv, &file, 1, &npos, usage, out);
    if (pr) return pr < 0 ? 0 : pr;
    if (!file) { usage(stderr); return 2; }
    if ((va.model || va.work_dir) && !va.reproduce) {
        fprintf(stderr, "danlu verify: --model and --work-dir go with --reproduce\n");
        return 2;
    }
    dl_provenance rec;
    char *config_json = NULL;
    if (dl_prov_read(&rec, file, &config_json) != DL_OK) {
        fprintf(stderr, "danlu verify: %s\n", dl_error_msg());
        return 2;
    }
    print_record(out, file, &rec);
    int rc = 0;
    if (va.dataset && !va.reproduce) rc = verify_dataset(out, file, &rec, config_json, va.dataset);
    free(config_json);
    dl_prov_free(&rec);
    if (va.reproduce) rc = verify_reproduce(out, file, &va);
    return rc;
}
