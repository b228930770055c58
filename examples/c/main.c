/* A C program running the model library `mlp`: `kiln compile MODEL -o DIR/libmlp.so` writes it
 * and DIR/mlp.h. Any model compiled under that name works: the program reads its inputs and
 * outputs from the header's tables.
 * Build and run it (see README.md):
 *
 *     cc examples/c/main.c -I DIR -L DIR -lmlp -Wl,-rpath,DIR -o DIR/app
 *     DIR/app [SIZE]
 *
 * Every input gets deterministic values (named dimensions are SIZE, default 2); every output
 * is printed as "output NAME DTYPE [SHAPE]" followed by its elements, one per line.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mlp.h"

/* Bytes of `n` elements of a dtype (types narrower than a byte take one each). */
static size_t element_bytes(int32_t dtype) {
    switch (dtype) {
    case KILN_F64: case KILN_I64: case KILN_U64: return 8;
    case KILN_F32: case KILN_I32: case KILN_U32: return 4;
    case KILN_F16: case KILN_BF16: case KILN_I16: case KILN_U16: return 2;
    default: return 1;
    }
}

/* The i-th input value: small numbers of both signs. */
static double value(size_t i) { return (double)((long)(i * 7 % 11) - 5) / 4.0; }

static void fill(kiln_buffer *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        double v = value(i);
        switch (b->dtype) {
        case KILN_F32: ((float *)b->data)[i] = (float)v; break;
        case KILN_F64: ((double *)b->data)[i] = v; break;
        case KILN_I8: ((int8_t *)b->data)[i] = (int8_t)(i % 3); break;
        case KILN_I16: ((int16_t *)b->data)[i] = (int16_t)(i % 3); break;
        case KILN_I32: ((int32_t *)b->data)[i] = (int32_t)(i % 3); break;
        case KILN_I64: ((int64_t *)b->data)[i] = (int64_t)(i % 3); break;
        case KILN_U16: ((uint16_t *)b->data)[i] = (uint16_t)(i % 3); break;
        case KILN_U32: ((uint32_t *)b->data)[i] = (uint32_t)(i % 3); break;
        case KILN_U64: ((uint64_t *)b->data)[i] = (uint64_t)(i % 3); break;
        case KILN_BOOL: ((uint8_t *)b->data)[i] = (uint8_t)(i % 2); break;
        case KILN_U8: ((uint8_t *)b->data)[i] = (uint8_t)(i % 3); break;
        default: break; /* 16-bit floats and narrower types: left zero */
        }
    }
}

static void print(const kiln_buffer *b) {
    size_t n = 1;
    printf("output %s %d [", b->name, b->dtype);
    for (uint32_t a = 0; a < b->rank; a++) {
        printf(a ? ", %lld" : "%lld", (long long)b->shape[a]);
        n *= (size_t)b->shape[a];
    }
    printf("]\n");
    for (size_t i = 0; i < n; i++) {
        const void *d = b->data;
        switch (b->dtype) {
        case KILN_F32: printf("%.9g\n", ((const float *)d)[i]); break;
        case KILN_F64: printf("%.17g\n", ((const double *)d)[i]); break;
        case KILN_I8: printf("%d\n", ((const int8_t *)d)[i]); break;
        case KILN_I16: printf("%d\n", ((const int16_t *)d)[i]); break;
        case KILN_I32: printf("%d\n", ((const int32_t *)d)[i]); break;
        case KILN_I64: printf("%lld\n", (long long)((const int64_t *)d)[i]); break;
        case KILN_U16: printf("%u\n", ((const uint16_t *)d)[i]); break;
        case KILN_U32: printf("%u\n", ((const uint32_t *)d)[i]); break;
        case KILN_U64: printf("%llu\n", (unsigned long long)((const uint64_t *)d)[i]); break;
        case KILN_F16: case KILN_BF16: printf("0x%04x\n", ((const uint16_t *)d)[i]); break;
        default: printf("%u\n", ((const uint8_t *)d)[i]); break;
        }
    }
}

int main(int argc, char **argv) {
    int64_t size = argc > 1 ? atoll(argv[1]) : 2;
    mlp_model *model = mlp_create();
    if (!model) {
        fprintf(stderr, "cannot load the model: %s\n", mlp_last_error());
        return 1;
    }
    /* Errors are values: running without inputs says what is missing. */
    if (mlp_run(model, NULL, 0, NULL, 0) != 0)
        printf("without inputs: %s\n", mlp_last_error());

    kiln_buffer inputs[MLP_INPUTS + 1];
    for (int i = 0; i < MLP_INPUTS; i++) {
        kiln_buffer *b = &inputs[i];
        size_t n = 1;
        memset(b, 0, sizeof *b);
        b->name = MLP_INPUT_NAMES[i];
        b->dtype = MLP_INPUT_DTYPES[i];
        b->rank = MLP_INPUT_RANKS[i];
        for (uint32_t a = 0; a < b->rank; a++) {
            b->shape[a] = MLP_INPUT_SHAPES[i][a] < 0 ? size : MLP_INPUT_SHAPES[i][a];
            n *= (size_t)b->shape[a];
        }
        b->bytes = n * element_bytes(b->dtype);
        b->data = calloc(b->bytes ? b->bytes : 1, 1);
        fill(b, n);
    }
    kiln_buffer outputs[MLP_OUTPUTS + 1];
    memset(outputs, 0, sizeof outputs);
    for (int i = 0; i < MLP_OUTPUTS; i++)
        outputs[i].name = MLP_OUTPUT_NAMES[i];
    /* The first run learns how much room the outputs need. */
    int status = mlp_run(model, inputs, MLP_INPUTS, outputs, MLP_OUTPUTS);
    if (status != 0) {
        for (int i = 0; i < MLP_OUTPUTS; i++)
            outputs[i].data = malloc(outputs[i].bytes ? outputs[i].bytes : 1);
        status = mlp_run(model, inputs, MLP_INPUTS, outputs, MLP_OUTPUTS);
    }
    if (status != 0) {
        fprintf(stderr, "run failed: %s\n", mlp_last_error());
        mlp_destroy(model);
        return 1;
    }
    for (int i = 0; i < MLP_OUTPUTS; i++)
        print(&outputs[i]);
    for (int i = 0; i < MLP_INPUTS; i++)
        free(inputs[i].data);
    for (int i = 0; i < MLP_OUTPUTS; i++)
        free(outputs[i].data);
    mlp_destroy(model);
    return 0;
}
