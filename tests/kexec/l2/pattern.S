/*
 * Firmware-only L2 guest of the kexec scenario: a multiboot (v1) program
 * that QEMU loads with -kernel. It fills guest RAM from 4 MiB to the end of
 * the first upper memory region with a xorshift32 sequence seeded from the
 * TSC (so the pattern exists only in guest RAM, in no file), writes a header
 * at 2 MiB, then sleeps in hlt and counts 100 Hz PIT ticks in the header.
 *
 * Header at 0x200000 (little-endian u32 unless said otherwise):
 *   +0  "CPRPATT1"    +8  seed    +12 pattern base    +16 pattern words
 *   +20 ready (1 once the pattern is complete)        +24 ticks
 *
 * Build: as --32 -o pattern.o pattern.S && ld -m elf_i386 -Ttext 0x100000 -o pattern.elf pattern.o
 */
        .set MB_MAGIC, 0x1BADB002
        .set MB_FLAGS, 0x00000002      /* ask for the memory information */
        .set HDR, 0x200000
        .set BASE, 0x400000

        .text
        .code32
        .globl _start
        .align 4
multiboot:
        .long MB_MAGIC
        .long MB_FLAGS
        .long -(MB_MAGIC + MB_FLAGS)

_start:
        cli
        mov %ebx, %esi                 /* multiboot information */
        lgdt gdtr
        ljmp $0x08, $1f
1:      mov $0x10, %ax
        mov %ax, %ds
        mov %ax, %es
        mov %ax, %ss
        mov %ax, %fs
        mov %ax, %gs
        mov $stack_top, %esp

        /* end of RAM = 1 MiB + mem_upper KiB (multiboot info +8) */
        mov 8(%esi), %ecx
        shl $10, %ecx
        add $0x100000, %ecx
        sub $BASE, %ecx
        shr $2, %ecx                   /* words to fill */

        movl $0, HDR + 20
        movl $0, HDR + 24
        movl $0x50525043, HDR          /* "CPRP" */
        movl $0x31545441, HDR + 4      /* "ATT1" */
        rdtsc
        xor %edx, %eax
        or $1, %eax
        mov %eax, HDR + 8
        movl $BASE, HDR + 12
        mov %ecx, HDR + 16

        mov $BASE, %edi
2:      mov %eax, %edx                 /* xorshift32 */
        shl $13, %edx
        xor %edx, %eax
        mov %eax, %edx
        shr $17, %edx
        xor %edx, %eax
        mov %eax, %edx
        shl $5, %edx
        xor %edx, %eax
        mov %eax, (%edi)
        add $4, %edi
        dec %ecx
        jnz 2b
        movl $1, HDR + 20

        /* IDT: every vector to tick (only the timer should ever fire) */
        mov $idt, %edi
        mov $256, %ecx
        mov $tick, %eax
3:      mov %ax, (%edi)
        movw $0x08, 2(%edi)
        movw $0x8E00, 4(%edi)
        mov %eax, %edx
        shr $16, %edx
        mov %dx, 6(%edi)
        add $8, %edi
        dec %ecx
        jnz 3b
        lidt idtr

        /* PIC: IRQ 0-7 at vectors 0x20-0x27, only IRQ 0 unmasked */
        mov $0x11, %al
        out %al, $0x20
        out %al, $0xA0
        mov $0x20, %al
        out %al, $0x21
        mov $0x28, %al
        out %al, $0xA1
        mov $0x04, %al
        out %al, $0x21
        mov $0x02, %al
        out %al, $0xA1
        mov $0x01, %al
        out %al, $0x21
        out %al, $0xA1
        mov $0xFE, %al
        out %al, $0x21
        mov $0xFF, %al
        out %al, $0xA1
        /* PIT channel 0: rate generator, 1193182 / 11932 = 100 Hz */
        mov $0x34, %al
        out %al, $0x43
        mov $0x9C, %al
        out %al, $0x40
        mov $0x2E, %al
        out %al, $0x40
        sti
4:      hlt
        jmp 4b

tick:
        incl HDR + 24
        push %eax
        mov $0x20, %al
        out %al, $0x20
        pop %eax
        iret

        .data
        .align 8
gdt:
        .quad 0
        .quad 0x00CF9A000000FFFF       /* 0x08: code, flat 4 GiB */
        .quad 0x00CF92000000FFFF       /* 0x10: data, flat 4 GiB */
gdtr:
        .word gdtr - gdt - 1
        .long gdt
idtr:
        .word 256 * 8 - 1
        .long idt

        .bss
        .align 16
idt:
        .space 256 * 8
        .space 4096
stack_top:
