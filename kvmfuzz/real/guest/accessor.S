/*
 * kvmfuzz guest accessor: runs at CPL3 in 64-bit mode on host-built identity page tables.
 *
 * The host sets RBX to this vCPU's mailbox (64 bytes in the system slot) and RIP to
 * `accessor_loop`, then for each command writes the mailbox and calls KVM_RUN:
 *
 *   mailbox+0   cmd    1..4 read 1/2/4/8 bytes, 5..8 write 1/2/4/8 bytes, anything else: no-op
 *   mailbox+8   gpa    identity-mapped guest address of the access
 *   mailbox+16  value  value to write
 *   mailbox+24  result value read (zero-extended), written by the guest
 *
 * The guest performs the access, stores the result and reports with `out 0x10, al`
 * (one KVM_EXIT_IO per command; AL echoes the command). The next KVM_RUN resumes after the
 * OUT and jumps back to read the next command. Nothing here writes memory other than the
 * accessed gpa and the mailbox; no stack, no interrupts, no exceptions are expected.
 *
 * Built once (the runtime needs no assembler):
 *   as --64 -o accessor.o accessor.S && objcopy -O binary -j .text accessor.o accessor.bin
 *   python3 -c "print(open('accessor.bin','rb').read().hex())"
 * and the hex pasted into kvmfuzz/real/accessor.py (ACCESSOR_CODE), whose test checks the
 * entry offset and length below against `objdump -d accessor.o`.
 */
	.intel_syntax noprefix
	.code64
	.text
	.globl accessor_loop
accessor_loop:
	mov	rax, qword ptr [rbx]
	mov	rdi, qword ptr [rbx + 8]
	mov	rsi, qword ptr [rbx + 16]
	cmp	eax, 1
	je	read8
	cmp	eax, 2
	je	read16
	cmp	eax, 3
	je	read32
	cmp	eax, 4
	je	read64
	cmp	eax, 5
	je	write8
	cmp	eax, 6
	je	write16
	cmp	eax, 7
	je	write32
	cmp	eax, 8
	je	write64
	xor	edx, edx
	jmp	report
read8:
	movzx	edx, byte ptr [rdi]
	jmp	report
read16:
	movzx	edx, word ptr [rdi]
	jmp	report
read32:
	mov	edx, dword ptr [rdi]
	jmp	report
read64:
	mov	rdx, qword ptr [rdi]
	jmp	report
write8:
	mov	byte ptr [rdi], sil
	jmp	written
write16:
	mov	word ptr [rdi], si
	jmp	written
write32:
	mov	dword ptr [rdi], esi
	jmp	written
write64:
	mov	qword ptr [rdi], rsi
written:
	mov	rdx, rsi
report:
	mov	qword ptr [rbx + 24], rdx
	out	0x10, al
	jmp	accessor_loop
