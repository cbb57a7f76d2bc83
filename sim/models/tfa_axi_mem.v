// External memory for simulations: an AXI4 slave over 2**DEPTH_LOG2 words of DW bits, with
// random latency and backpressure from seeded xorshift32 generators, so that a testbench needs
// no Python per beat (cocotbext-axi's AxiRam costs a Python coroutine step per beat on every
// channel; sim/tb/axi.py HdlMemory drives this one, docs/dma.md has the measured rates).
//
// - Bursts: INCR, full width only (arsize/awsize = log2(DW/8)), never across 4 KiB; anything
//   else sets the sticky `protocol_error` output and is $display'ed. So does a wlast in the
//   wrong place. Addresses wrap modulo the memory size.
// - AR and AW are queued (8 bursts each); reads are answered in order, a burst's first beat
//   no earlier than a random 1..max_latency+1 cycles after its AR was taken (bursts overlap
//   their latencies, as in a pipelined memory), its beats with random valid gaps
//   (`stall`/65536 per cycle); W is taken for the oldest queued AW, with random ready-low cycles
//   (`backpressure`/65536, also on AR and AW); B answers in order, with random valid gaps.
// - Four error windows [err_lo, err_hi) (AW bits each, packed; lo == hi: none), answer code 2
//   bits each in err_resp: a read beat inside one returns 0 with that code, a write beat inside
//   one is dropped and its burst answers that code.
// - `load` (one cycle) reads axi_mem_in.hex, `dump` writes axi_mem_out.hex ($readmemh format,
//   one word per line), both in the simulation's working folder: words dump_lo .. dump_hi - 1,
//   or every word when dump_hi is 0.
module tfa_axi_mem #(
    parameter AW = 32,
    parameter DW = 128,
    parameter IDW = 1,
    parameter DEPTH_LOG2 = 16
) (
    input wire clk,
    input wire rst,
    input wire [31:0] seed,
    input wire [15:0] stall,
    input wire [15:0] backpressure,
    input wire [7:0] max_latency,
    input wire [4*AW-1:0] err_lo,
    input wire [4*AW-1:0] err_hi,
    input wire [7:0] err_resp,
    input wire load,
    input wire dump,
    input wire [31:0] dump_lo,
    input wire [31:0] dump_hi,
    output reg protocol_error,
    input wire [IDW-1:0] awid,
    input wire [AW-1:0] awaddr,
    input wire [7:0] awlen,
    input wire [2:0] awsize,
    input wire [1:0] awburst,
    input wire [3:0] awcache,
    input wire [2:0] awprot,
    input wire awvalid,
    output wire awready,
    input wire [DW-1:0] wdata,
    input wire [DW/8-1:0] wstrb,
    input wire wlast,
    input wire wvalid,
    output wire wready,
    output reg [IDW-1:0] bid,
    output reg [1:0] bresp,
    output reg bvalid,
    input wire bready,
    input wire [IDW-1:0] arid,
    input wire [AW-1:0] araddr,
    input wire [7:0] arlen,
    input wire [2:0] arsize,
    input wire [1:0] arburst,
    input wire [3:0] arcache,
    input wire [2:0] arprot,
    input wire arvalid,
    output wire arready,
    output reg [IDW-1:0] rid,
    output reg [DW-1:0] rdata,
    output reg [1:0] rresp,
    output reg rlast,
    output reg rvalid,
    input wire rready
);
    localparam NB = DW / 8;
    localparam LB = $clog2(NB);
    localparam Q = 8;

    reg [DW-1:0] mem [0:(1 << DEPTH_LOG2) - 1];

    function [31:0] xorshift(input [31:0] x);
        reg [31:0] y;
        begin
            y = x ^ (x << 13);
            y = y ^ (y >> 17);
            xorshift = y ^ (y << 5);
        end
    endfunction

    function [1:0] window(input [AW-1:0] a);
        integer k;
        begin
            window = 2'd0;
            for (k = 3; k >= 0; k = k - 1)
                if (a >= err_lo[k*AW +: AW] && a < err_hi[k*AW +: AW])
                    window = err_resp[2*k +: 2];
        end
    endfunction

    function bad_burst(input [AW-1:0] a, input [7:0] len, input [2:0] size, input [1:0] burst);
        begin
            bad_burst = burst != 2'd1 || size != LB || a[LB-1:0] != 0
                        || ({20'd0, a[11:0]} + (({24'd0, len} + 32'd1) << LB)) > 32'd4096;
        end
    endfunction

    // random generators: AR ready, AW ready, W ready, R gaps, B gaps, read latency
    reg [31:0] g_ar, g_aw, g_w, g_r, g_b, g_lat;
    reg ar_pause, aw_pause, w_pause;
    wire r_gap = g_r[15:0] < stall;
    wire b_gap = g_b[15:0] < stall;

    // AR queue and the read burst in progress
    reg [IDW-1:0] arq_id [0:Q-1];
    reg [AW-1:0] arq_addr [0:Q-1];
    reg [7:0] arq_len [0:Q-1];
    reg [31:0] arq_due [0:Q-1];
    reg [31:0] now;
    reg [3:0] arq_n;
    reg [2:0] arq_rd, arq_wr;
    reg r_busy;
    reg [AW-1:0] r_addr;
    reg [7:0] r_left;
    reg [IDW-1:0] r_id;
    assign arready = (arq_n != Q) && !ar_pause;
    wire ar_take = arvalid && arready;
    wire r_send = r_busy && (!rvalid || rready) && !r_gap;
    wire ar_pop = (!r_busy || (r_send && r_left == 0)) && arq_n != 0 && $signed(now - arq_due[arq_rd]) >= 0;

    // AW queue, the write burst in progress, the B queue
    reg [IDW-1:0] awq_id [0:Q-1];
    reg [AW-1:0] awq_addr [0:Q-1];
    reg [7:0] awq_len [0:Q-1];
    reg [3:0] awq_n;
    reg [2:0] awq_rd, awq_wr;
    reg [7:0] w_beat;
    reg [1:0] w_resp;
    reg [IDW-1:0] bq_id [0:Q-1];
    reg [1:0] bq_resp [0:Q-1];
    reg [3:0] bq_n;
    reg [2:0] bq_rd, bq_wr;
    assign awready = (awq_n != Q) && !aw_pause;
    assign wready = (awq_n != 0) && (bq_n != Q) && !w_pause;
    wire aw_take = awvalid && awready;
    wire w_take = wvalid && wready;
    wire [AW-1:0] w_addr = awq_addr[awq_rd] + ({{(AW-8){1'b0}}, w_beat} << LB);
    wire w_done = w_take && w_beat == awq_len[awq_rd];
    wire b_pop = bq_n != 0 && (!bvalid || bready) && !b_gap;

    integer i;
    always @(posedge clk) begin
        if (load) $readmemh("axi_mem_in.hex", mem);
        if (dump) begin
            if (dump_hi != 0) $writememh("axi_mem_out.hex", mem, dump_lo, dump_hi - 1);
            else $writememh("axi_mem_out.hex", mem);
        end
        if (rst) begin
            g_ar <= seed ^ 32'h9E3779B9; g_aw <= seed ^ 32'h7F4A7C15; g_w <= seed ^ 32'h85EBCA6B;
            g_r <= seed ^ 32'hC2B2AE35; g_b <= seed ^ 32'h27D4EB2F; g_lat <= seed ^ 32'h165667B1;
            ar_pause <= 0; aw_pause <= 0; w_pause <= 0;
            arq_n <= 0; arq_rd <= 0; arq_wr <= 0; r_busy <= 0; rvalid <= 0; now <= 0;
            awq_n <= 0; awq_rd <= 0; awq_wr <= 0; w_beat <= 0; w_resp <= 0;
            bq_n <= 0; bq_rd <= 0; bq_wr <= 0; bvalid <= 0; protocol_error <= 0;
        end else begin
            g_ar <= xorshift(g_ar); g_aw <= xorshift(g_aw); g_w <= xorshift(g_w);
            g_r <= xorshift(g_r); g_b <= xorshift(g_b); g_lat <= xorshift(g_lat);
            now <= now + 1;
            ar_pause <= g_ar[15:0] < backpressure;
            aw_pause <= g_aw[15:0] < backpressure;
            w_pause <= g_w[15:0] < backpressure;

            // -- reads -----------------------------------------------------------------------
            if (ar_take) begin
                arq_id[arq_wr] <= arid; arq_addr[arq_wr] <= araddr; arq_len[arq_wr] <= arlen;
                arq_due[arq_wr] <= now + (max_latency == 0 ? 32'd0 : {24'd0, g_lat[7:0]} % ({24'd0, max_latency} + 32'd1));
                arq_wr <= arq_wr + 1;
                if (bad_burst(araddr, arlen, arsize, arburst)) begin
                    protocol_error <= 1;
                    $display("tfa_axi_mem: bad read burst addr %h len %0d size %0d burst %0d",
                             araddr, arlen, arsize, arburst);
                end
            end
            arq_n <= arq_n + (ar_take ? 4'd1 : 4'd0) - (ar_pop ? 4'd1 : 4'd0);
            if (rvalid && rready) rvalid <= 0;
            if (r_send) begin
                rvalid <= 1; rid <= r_id; rlast <= r_left == 0;
                rresp <= window(r_addr);
                rdata <= window(r_addr) != 0 ? {DW{1'b0}} : mem[r_addr[LB +: DEPTH_LOG2]];
                r_addr <= r_addr + NB;
                r_left <= r_left - 1;
                if (r_left == 0) r_busy <= 0;
            end
            if (ar_pop) begin
                r_busy <= 1; r_id <= arq_id[arq_rd]; r_addr <= arq_addr[arq_rd]; r_left <= arq_len[arq_rd];
                arq_rd <= arq_rd + 1;
            end

            // -- writes ----------------------------------------------------------------------
            if (aw_take) begin
                awq_id[awq_wr] <= awid; awq_addr[awq_wr] <= awaddr; awq_len[awq_wr] <= awlen;
                awq_wr <= awq_wr + 1;
                if (bad_burst(awaddr, awlen, awsize, awburst)) begin
                    protocol_error <= 1;
                    $display("tfa_axi_mem: bad write burst addr %h len %0d size %0d burst %0d",
                             awaddr, awlen, awsize, awburst);
                end
            end
            awq_n <= awq_n + (aw_take ? 4'd1 : 4'd0) - (w_done ? 4'd1 : 4'd0);
            if (w_take) begin
                if (wlast != w_done) begin
                    protocol_error <= 1;
                    $display("tfa_axi_mem: wlast %0d on beat %0d of a %0d-beat burst", wlast, w_beat,
                             awq_len[awq_rd] + 1);
                end
                if (window(w_addr) == 0) begin
                    for (i = 0; i < NB; i = i + 1)
                        if (wstrb[i]) mem[w_addr[LB +: DEPTH_LOG2]][8*i +: 8] <= wdata[8*i +: 8];
                end
                if (w_done) begin
                    bq_id[bq_wr] <= awq_id[awq_rd];
                    bq_resp[bq_wr] <= (wstrb != 0 && window(w_addr) != 0) ? window(w_addr) : w_resp;
                    bq_wr <= bq_wr + 1;
                    awq_rd <= awq_rd + 1;
                    w_beat <= 0;
                    w_resp <= 0;
                end else begin
                    w_beat <= w_beat + 1;
                    if (wstrb != 0 && window(w_addr) != 0) w_resp <= window(w_addr);
                end
            end
            bq_n <= bq_n + (w_done ? 4'd1 : 4'd0) - (b_pop ? 4'd1 : 4'd0);
            if (bvalid && bready) bvalid <= 0;
            if (b_pop) begin
                bvalid <= 1; bid <= bq_id[bq_rd]; bresp <= bq_resp[bq_rd];
                bq_rd <= bq_rd + 1;
            end
        end
    end
endmodule
